//go:build !nofakegpu

package gpubackend

import (
	"context"
	"log/slog"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
)

// FakeBuiltIn reports whether this binary has the fake GPU node.
const FakeBuiltIn = true

func openFake(fakeFile string) (Opened, error) {
	fc := fakegpu.DefaultConfig()
	if fakeFile != "" {
		var err error
		if fc, err = fakegpu.LoadFile(fakeFile); err != nil {
			return Opened{}, err
		}
	}
	node, err := fakegpu.New(fc)
	if err != nil {
		return Opened{}, err
	}
	o := Opened{Backend: node}
	if fakeFile != "" {
		o.Watch = func(ctx context.Context, log *slog.Logger) error { return fakegpu.WatchFile(ctx, fakeFile, node, log) }
	}
	return o, nil
}

func checkFake(fakeFile string) error {
	if fakeFile == "" {
		return nil
	}
	_, err := fakegpu.LoadFile(fakeFile)
	return err
}
