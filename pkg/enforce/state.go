package enforce

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
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

// ThawRecorded thaws every container the record names and clears it. A
// cgroup that no longer exists is skipped. It returns how many were thawed
// and the errors for the others.
func (s StateFile) ThawRecorded() (int, error) {
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
		// keeping it would fail every start.
		_ = os.Remove(s.Path)
		return 0, fmt.Errorf("enforcement state %s is corrupt, removed: %w", s.Path, err)
	}
	thawed := 0
	var errs []error
	for _, f := range files {
		fr := Freezer{File: f}
		err := fr.Thaw()
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
