package fakegpu

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"

	"github.com/fsnotify/fsnotify"
)

// WatchFile puts the faults section and the GPUs' MIG layouts of the YAML
// file at path in force on node every time the file changes, until ctx
// ends. The file is the one the node was built from: another change to its
// GPUs cannot be applied to a running node and is logged and ignored, as
// is a file that does not parse or a MIG layout a GPU cannot hold. The directory is watched, not the file, so editors that
// replace the file by renaming are seen too.
func WatchFile(ctx context.Context, path string, node *Node, log *slog.Logger) error {
	base, err := LoadFile(path)
	if err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch fake GPU config: %w", err)
	}
	defer func() { _ = w.Close() }() // nothing useful to do if closing the watcher fails
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("watch fake GPU config: %w", err)
	}
	name := filepath.Clean(path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			log.Warn("fake gpu config watch error", "err", err)
		case ev := <-w.Events:
			if filepath.Clean(ev.Name) != name || !ev.Has(fsnotify.Write|fsnotify.Create|fsnotify.Rename) {
				continue
			}
			cfg, err := LoadFile(path)
			if err != nil {
				log.Warn("fake gpu config not applied", "path", path, "err", err)
				continue
			}
			if !sameInventory(base, cfg) {
				log.Warn("fake gpu config changes the gpus; restart to apply", "path", path)
				continue
			}
			if err := node.SetFaults(cfg.Faults); err != nil {
				log.Warn("fake gpu faults not applied", "path", path, "err", err)
				continue
			}
			log.Info("fake gpu faults applied", "path", path, "faults", fmt.Sprintf("%+v", cfg.Faults))
			for i, g := range cfg.GPUs {
				if reflect.DeepEqual(g.MIG, base.GPUs[i].MIG) {
					continue
				}
				if err := node.SetMIG(i, g.MIG); err != nil {
					log.Warn("fake gpu MIG layout not applied", "path", path, "err", err)
					continue
				}
				base.GPUs[i].MIG = g.MIG
				log.Info("fake gpu MIG layout applied", "gpu", i, "mig", fmt.Sprintf("%+v", g.MIG))
			}
		}
	}
}

func sameInventory(a, b Config) bool {
	a.Faults, b.Faults = Faults{}, Faults{}
	a.GPUs, b.GPUs = withoutMIG(a.GPUs), withoutMIG(b.GPUs)
	return reflect.DeepEqual(a, b)
}

func withoutMIG(gpus []GPUConfig) []GPUConfig {
	out := make([]GPUConfig, len(gpus))
	for i, g := range gpus {
		g.MIG = MIGConfig{}
		out[i] = g
	}
	return out
}
