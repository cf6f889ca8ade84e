package enforce

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/gpuslice/gpuslice/pkg/host"
)

// StateFile records the freezer files of every container under throttle,
// so that a restarted agent thaws what a killed one may have left frozen.
type StateFile struct {
	Path string
}

// Write records files, replacing the previous record atomically.
func (s StateFile) Write(files []string) error {
	sort.Strings(files)
	data, err := json.Marshal(files)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o750); err != nil {
		return fmt.Errorf("enforcement state dir: %w", err)
	}
	tmp := s.Path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write enforcement state: %w", err)
	}
	if err := os.Rename(tmp, s.Path); err != nil {
		return fmt.Errorf("write enforcement state: %w", err)
	}
	return nil
}

// ThawRecorded thaws every cgroup the record names and clears it. The
// record is not trusted: only a freezer control file (cgroup.freeze or
// freezer.state) of a cgroup under cgroupRoot, on a cgroup filesystem,
// reached without symlinks, is written; anything else is logged and
// skipped. A cgroup that no longer exists is skipped. It returns how many
// were thawed and the errors for the others.
func (s StateFile) ThawRecorded(cgroupRoot string, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	data, err := os.ReadFile(s.Path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read enforcement state: %w", err)
	}
	var files []string
	if err := json.Unmarshal(data, &files); err != nil {
		// A torn or foreign file: nothing can be trusted in it, and
		// keeping it would fail every start. ThawMarked covers what
		// it may have named.
		_ = os.Remove(s.Path)
		return 0, fmt.Errorf("enforcement state %s is corrupt, removed: %w", s.Path, err)
	}
	thawed := 0
	var errs []error
	for _, f := range files {
		if err := checkFreezerFile(cgroupRoot, f); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				log.Warn("ignoring enforcement state entry", "file", f, "err", err)
			}
			continue
		}
		err := Freezer{File: f}.Thaw()
		switch {
		case err == nil:
			thawed++
		case errors.Is(err, os.ErrNotExist):
		default:
			errs = append(errs, err)
		}
	}
	if err := s.Write(nil); err != nil {
		errs = append(errs, err)
	}
	return thawed, errors.Join(errs...)
}

// Filesystem magic numbers of cgroup v1 and v2 (linux/magic.h).
const (
	cgroupSuperMagic  = 0x27e0eb
	cgroup2SuperMagic = 0x63677270
)

// ErrNotFreezerFile reports a path that is not a freezer control file of a
// cgroup under the cgroup root.
var ErrNotFreezerFile = errors.New("not a cgroup freezer file under the cgroup root")

// checkFreezerFile accepts only <cgroupRoot>/…/cgroup.freeze or
// <cgroupRoot>/…/freezer.state, clean, free of symlinks, on a cgroup
// filesystem.
func checkFreezerFile(cgroupRoot, f string) error {
	root := filepath.Clean(cgroupRoot)
	if !filepath.IsAbs(f) || filepath.Clean(f) != f || !strings.HasPrefix(f, root+string(filepath.Separator)) {
		return fmt.Errorf("%w: %q", ErrNotFreezerFile, f)
	}
	if b := filepath.Base(f); b != "cgroup.freeze" && b != "freezer.state" {
		return fmt.Errorf("%w: %q", ErrNotFreezerFile, f)
	}
	real, err := filepath.EvalSymlinks(f)
	if err != nil {
		return err
	}
	if real != f {
		return fmt.Errorf("%w: %q leads to %q", ErrNotFreezerFile, f, real)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(f, &st); err != nil {
		return err
	}
	if st.Type != cgroupSuperMagic && st.Type != cgroup2SuperMagic {
		return fmt.Errorf("%w: %q is not on a cgroup filesystem", ErrNotFreezerFile, f)
	}
	return nil
}

// ThawMarked thaws every pod-level and container-level cgroup of the
// kubelet's pod hierarchy under cgroupRoot (cgroup v2 at the root or
// <root>/unified, and the v1 freezer hierarchy) that carries FreezeMark:
// the cgroups gpuslice froze and did not thaw. A cgroup frozen by anyone
// else carries no mark and is left as it is, and so is one whose mark
// names an agent process still alive in procRoot (it holds that freeze);
// subtrees below a container's cgroup are its own and are never looked
// at. It is the agent's safety net when its record is torn, missing or
// could not be written.
func ThawMarked(cgroupRoot, procRoot string) (int, error) {
	type mount struct{ dir, file string }
	var mounts []mount
	for _, dir := range []string{cgroupRoot, filepath.Join(cgroupRoot, "unified")} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			mounts = append(mounts, mount{dir, "cgroup.freeze"})
		}
	}
	if dirExists(filepath.Join(cgroupRoot, "freezer")) {
		mounts = append(mounts, mount{filepath.Join(cgroupRoot, "freezer"), "freezer.state"})
	}
	thawed := 0
	var errs []error
	for _, m := range mounts {
		_ = filepath.WalkDir(m.dir, func(path string, e fs.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil //nolint:nilerr // a cgroup removed while walking
			}
			rel, _ := filepath.Rel(m.dir, path)
			if path == m.dir {
				return nil
			}
			if strings.Contains(rel, "/") && !strings.Contains(rel, "kubepods") {
				return fs.SkipDir // system.slice, user.slice...
			}
			c, ok := host.ParseCgroupPath("/" + rel)
			if !ok {
				return nil // above the pods: keep walking down
			}
			if c.Paths[""] != "/"+rel {
				return fs.SkipDir // a container's own subtree
			}
			f := Freezer{File: filepath.Join(path, m.file)}
			owner, marked := f.markOwner()
			if !marked || alive(procRoot, owner) {
				return nil // never frozen by gpuslice, thawed already, or held by a live agent
			}
			if err := f.Thaw(); err != nil {
				errs = append(errs, err)
				return nil
			}
			thawed++
			return nil
		})
	}
	return thawed, errors.Join(errs...)
}

func dirExists(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}
