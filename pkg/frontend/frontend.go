package frontend

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// File names in the directory the two binaries share (that of the DRA
// driver's record of prepared claims, /var/lib/gpuslice).
const (
	LockFile    = "frontends.lock"
	PendingFile = "vgpu-granted.json"
)

// PendingTTL is how long a device-plugin grant counts without the
// kubelet's word: the kubelet lists an admitted container in
// pod-resources within milliseconds of Allocate, and a grant of a pod that
// never started stops counting after this.
const PendingTTL = 10 * time.Second

// waitLimit bounds how long a front end waits for the other to let go of
// the lock; past it the call fails rather than hang the kubelet.
const waitLimit = 10 * time.Second

// Guard is the node's front-end lock and the device plugin's record of
// recent grants. The zero value is not usable; use New.
type Guard struct {
	dir string
	now func() time.Time
}

// New returns the guard kept in dir.
func New(dir string) *Guard { return NewAt(dir, time.Now) }

// NewAt is New with the time read from now (a test moves it on).
func NewAt(dir string, now func() time.Time) *Guard { return &Guard{dir: dir, now: now} }

// ErrBusy reports a lock the other front end held for longer than
// waitLimit.
var ErrBusy = errors.New("the other GPU front end holds the node's front-end lock")

// Hold takes the node's front-end lock and returns its release. The lock
// is an exclusive flock on LockFile, which excludes other processes and
// other callers in this one (each opens the file anew).
func (g *Guard) Hold() (func(), error) {
	path := filepath.Join(g.dir, LockFile)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("front-end lock %s: %w", path, err)
	}
	deadline := g.now().Add(waitLimit)
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Close(fd) }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || g.now().After(deadline) {
			_ = unix.Close(fd)
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w: %s", ErrBusy, path)
			}
			return nil, fmt.Errorf("front-end lock %s: %w", path, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// granted is PendingFile's content.
type granted struct {
	APIVersion string               `json:"apiVersion"`
	GPUs       map[string]time.Time `json:"gpus"`
}

const apiVersion = "gpuslice.io/v1alpha1"

// Granted records, under the lock, that the device plugin handed out
// slices of these GPUs now. Grants older than PendingTTL are dropped.
func (g *Guard) Granted(uuids []string) error {
	cur, err := g.read()
	if err != nil {
		cur = granted{GPUs: map[string]time.Time{}} // unreadable: this grant starts it anew
	}
	now := g.now()
	for _, u := range uuids {
		cur.GPUs[u] = now
	}
	for u, at := range cur.GPUs {
		if now.Sub(at) > PendingTTL {
			delete(cur.GPUs, u)
		}
	}
	cur.APIVersion = apiVersion
	data, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	path := filepath.Join(g.dir, PendingFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("record vgpu grants: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("record vgpu grants: %w", err)
	}
	return nil
}

// Pending returns the GPUs the device plugin handed out slices of within
// PendingTTL. A record that cannot be read is an error: a claim is then
// refused rather than risk a GPU the device plugin just gave out.
func (g *Guard) Pending() (map[string]bool, error) {
	cur, err := g.read()
	if err != nil {
		return nil, err
	}
	now, out := g.now(), map[string]bool{}
	for u, at := range cur.GPUs {
		if now.Sub(at) <= PendingTTL {
			out[u] = true
		}
	}
	return out, nil
}

func (g *Guard) read() (granted, error) {
	path := filepath.Join(g.dir, PendingFile)
	data, err := os.ReadFile(path) //nolint:gosec // in the operator's state directory
	if errors.Is(err, os.ErrNotExist) {
		return granted{GPUs: map[string]time.Time{}}, nil
	}
	if err != nil {
		return granted{}, fmt.Errorf("read vgpu grants: %w", err)
	}
	var cur granted
	if err := json.Unmarshal(data, &cur); err != nil {
		return granted{}, fmt.Errorf("vgpu grants %s: %w", path, err)
	}
	if cur.APIVersion != apiVersion {
		return granted{}, fmt.Errorf("vgpu grants %s: apiVersion %q, want %s", path, cur.APIVersion, apiVersion)
	}
	if cur.GPUs == nil {
		cur.GPUs = map[string]time.Time{}
	}
	return cur, nil
}
