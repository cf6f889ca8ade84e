package fakegpu

import (
	_ "embed" // the fake NVML library's C source
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// NVMLStateEnv names the environment variable through which the fake NVML
// library finds the state file written by Node.WriteNVMLState.
const NVMLStateEnv = "GPUSLICE_FAKE_NVML_STATE"

//go:embed nvmlc/fake_nvml.c
var nvmlSource []byte

// BuildNVMLLibrary compiles the fake libnvidia-ml.so.1 into dir with gcc and
// returns its path. Loaded through go-nvml (nvml.Options.LibraryPath, or
// gpu-agent --nvml-library), it answers the NVML calls pkg/nvml makes from
// the state file named by $GPUSLICE_FAKE_NVML_STATE, so tests run the real
// NVML code path against a fake node.
func BuildNVMLLibrary(dir string) (string, error) {
	src := filepath.Join(dir, "fake_nvml.c")
	if err := os.WriteFile(src, nvmlSource, 0o600); err != nil {
		return "", fmt.Errorf("write fake NVML source: %w", err)
	}
	lib := filepath.Join(dir, "libnvidia-ml.so.1")
	out, err := exec.Command("gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", lib, src).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build fake NVML library: %w: %s", err, out)
	}
	return lib, nil
}

// xidEvent is one XID the node reported, for the fake NVML library's event
// stream.
type xidEvent struct {
	gpu int
	xid uint64
	seq int64
	gi  int // the GPU instance the driver put it on; -1: the GPU
}

// NVMLState renders the node's current state in the fake NVML library's
// file format.
func (n *Node) NVMLState() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "driver\t%s\ncuda\t%d\n", n.system.DriverVersion, n.system.CUDADriverVersion)
	for _, d := range n.devices {
		lost := 0
		if n.faults[d.Index].Lost {
			lost = 1
		}
		mig := 0
		if d.MIGCapable {
			mig = 1
		}
		fmt.Fprintf(&b, "gpu\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t%d\n", d.UUID, d.Minor, d.MemoryBytes, d.ComputeMajor, d.ComputeMinor, d.PCIBusID, lost, d.Model, mig)
	}
	for _, d := range n.devices {
		if d.MIGCapable {
			fmt.Fprintf(&b, "mig\t%d\t%d\t%d\n", d.Index, bit(d.MIG.Current), bit(d.MIG.Pending))
		}
		for _, in := range d.MIG.Instances {
			fmt.Fprintf(&b, "miginst\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", d.Index, in.UUID,
				in.GPUInstanceID, in.ComputeInstanceID, in.GIProfileID, in.Placement, in.PlacementSize, in.MemoryBytes/mib,
				in.Multiprocessors, in.CopyEngines, in.Decoders, in.Encoders, in.JPEGDecoders, in.OFAs, in.GISlices, in.CISlices)
		}
	}
	// The physics as of now, as the driver would report them.
	n.advanceLocked(n.now())
	stamp := n.now().UnixMicro()
	for _, d := range n.devices {
		ph := n.physics[d.UUID]
		fmt.Fprintf(&b, "sample\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", d.Index, int(math.Round(ph.utilization*100)), ph.memoryUsed,
			int(30+45*ph.utilization), int(n.power(d, ph.utilization)*1000), int64(ph.energyJ*1000), smClockMHz(d), stamp)
		for _, p := range ph.procs {
			fmt.Fprintf(&b, "proc\t%d\t%d\t%d\t%d\n", d.Index, p.PID, p.MemoryBytes, int(math.Round(p.SMUtilization*100)))
		}
		for k, in := range d.MIG.Instances {
			if !d.MIG.Current {
				break
			}
			iph := n.physics[in.UUID]
			fmt.Fprintf(&b, "migsample\t%d\t%d\t%d\t%d\t%d\n", d.Index, k, iph.memoryUsed, int64(iph.busyNs), n.now().UnixNano())
			for _, p := range iph.procs {
				fmt.Fprintf(&b, "proc\t%d\t%d\t%d\t0\t%d\n", d.Index, p.PID, p.MemoryBytes, k+1)
			}
		}
		if bs := n.bins[d.UUID]; bs != nil {
			fmt.Fprintf(&b, "devutil\t%d\t%d\n", d.Index, bs.device)
			for _, period := range bs.history {
				for _, p := range period {
					fmt.Fprintf(&b, "psample\t%d\t%d\t%d\t%d\n", d.Index, p.pid, p.stamp, p.util)
				}
			}
		}
	}
	for _, x := range n.xids {
		if x.gi >= 0 {
			fmt.Fprintf(&b, "xid\t%d\t%d\t%d\t%d\t0\n", x.gpu, x.xid, x.seq, x.gi)
			continue
		}
		fmt.Fprintf(&b, "xid\t%d\t%d\t%d\n", x.gpu, x.xid, x.seq)
	}
	if n.driverLimits {
		b.WriteString("memlimits\t1\n")
	}
	for _, c := range calls {
		if n.fail[c] {
			fmt.Fprintf(&b, "fail\t%s\n", c)
		}
	}
	return []byte(b.String())
}

func bit(b bool) int {
	if b {
		return 1
	}
	return 0
}

// WriteNVMLState writes NVMLState to path atomically, so the library never
// reads half a file.
func (n *Node) WriteNVMLState(path string) error {
	n.mu.Lock()
	err := n.syncLimitsFileLocked(path + ".limits")
	n.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, n.NVMLState(), 0o600); err != nil {
		return fmt.Errorf("write fake NVML state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write fake NVML state: %w", err)
	}
	return nil
}

// BuildWorkload builds the fake GPU workload program into dir with the go
// tool and returns its path.
func BuildWorkload(dir string) (string, error) {
	bin := filepath.Join(dir, "workload")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/gpuslice/gpuslice/internal/fakegpu/workload").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build fake GPU workload: %w: %s", err, out)
	}
	return bin, nil
}
