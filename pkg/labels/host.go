package labels

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpuslice/gpuslice/pkg/nvml"
)

// Host is what the labels say of the machine rather than of its GPUs.
type Host struct {
	// GPUMode is GPUMode of the GPUs' PCI classes.
	GPUMode string
	// Machine is the machine's product name; empty when unknown.
	Machine string
}

// ReadHost reads the GPUs' PCI classes under sysfsRoot and the machine's
// product name from machineTypeFile (empty: sysfs's DMI product name). An
// unreadable product name is returned as the error, with the rest of Host
// filled in: the labels go on without nvidia.com/gpu.machine.
func ReadHost(sysfsRoot, machineTypeFile string, devs []nvml.Device) (Host, error) {
	classes := make([]string, 0, len(devs))
	for _, d := range devs {
		classes = append(classes, nvml.PCIClass(sysfsRoot, d.PCIBusID))
	}
	h := Host{GPUMode: GPUMode(classes)}
	if machineTypeFile == "" {
		machineTypeFile = filepath.Join(sysfsRoot, "class", "dmi", "id", "product_name")
	}
	machine, err := os.ReadFile(machineTypeFile) //nolint:gosec // the operator's own flag, or sysfs
	if err != nil {
		return h, fmt.Errorf("machine type unknown: %w", err)
	}
	h.Machine = strings.TrimSpace(string(machine))
	return h, nil
}
