// Package fakegpu is a stateful fake GPU node that implements nvml.Backend.
//
// A Node is built from a Config: a preset (A100-40GB, A100-80GB, H100-80GB,
// H200-141GB) times a count, or an explicit list of GPUs, written in Go or
// YAML. Faults are injected on a running node (an XID on a GPU, a lost GPU,
// errors from backend calls) and cleared again, and watchers see each
// change, exactly as they would see the driver's. WatchFile applies the
// faults section of a YAML file whenever the file changes, so a running
// gpu-agent --gpu-backend=fake can be driven from outside the process.
//
// It lives under test/ because it is a test double, but gpu-agent uses it
// for --gpu-backend=fake, so it is built like production code.
package fakegpu
