package deviceplugin

import (
	"fmt"
	"strconv"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/nvml"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// resourceSocket is the plugin socket of a resource other than the slice
// resource: one per resource, in the kubelet's plugin dir.
func resourceSocket(resource string) string {
	return "gpuslice-" + strings.NewReplacer("/", "-", ".", "-", "+", "-").Replace(resource) + ".sock"
}

// MIGSliceLayout cuts the MIG instances of devs whose profile has a
// slicing rule in cfg (cfg.MIGProfiles): each instance is a "GPU" of the
// layout, named by its MIG UUID, indexed by its GPU, with its own memory.
// It returns the layout and the instances it cut, by profile.
func MIGSliceLayout(devs []nvml.Device, cfg vgpu.Config) (*vgpu.Layout, map[string][]nvml.InForce, error) {
	var gpus []vgpu.GPU
	byProfile := map[string][]nvml.InForce{}
	for _, in := range nvml.InstancesInForce(devs) {
		if !cfg.SlicesMIG(in.Profile) {
			continue
		}
		gpus = append(gpus, vgpu.GPU{UUID: in.UUID, Index: in.Parent.Index, Model: in.Parent.Model + " MIG " + in.Profile, MemoryBytes: in.MemoryBytes, MIGProfile: in.Profile})
		byProfile[in.Profile] = append(byProfile[in.Profile], in)
	}
	l, err := vgpu.NewLayout(gpus, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("cut MIG instances: %w", err)
	}
	return l, byProfile, nil
}

// NewMIGSlices builds the plugin serving the slices of one MIG profile's
// instances under resource (contract.MIGSliceResource), cut as layout
// says (the layout of those instances alone). A container gets its
// instance in NVIDIA_VISIBLE_DEVICES (its MIG UUID), the contract's
// limits of its share of the instance and, with device specs, the device
// nodes MIG needs: its GPU's and the instance's two capability nodes.
// CUDA sees one MIG device per process, so a request no one instance
// holds is refused (span never). verify, when set, confirms before each
// Allocate that the instances still exist.
func NewMIGSlices(resource string, layout *vgpu.Layout, instances []nvml.InForce, opts Options, verify func(uuids []string) error) (*Plugin, error) {
	opts.ResourceName, opts.SocketName, opts.Span = resource, resourceSocket(resource), contract.SpanNever
	devs := make([]nvml.Device, 0, len(instances))
	for _, in := range instances {
		if opts.DeviceSpecs && (in.GICapMinor < 0 || in.CICapMinor < 0) {
			return nil, fmt.Errorf("%s: MIG instance %s on gpu %d: the driver lists no capability device for it (/proc/driver/nvidia-caps/mig-minors)", resource, in.UUID, in.Parent.Index)
		}
		d := in.Parent
		d.UUID, d.MemoryBytes, d.MIG = in.UUID, in.MemoryBytes, nvml.MIG{}
		devs = append(devs, d)
	}
	p, err := New(layout, devs, opts)
	if err != nil {
		return nil, err
	}
	p.verify = verify
	for _, in := range instances {
		p.extraSpecs[in.UUID] = []*pluginapi.DeviceSpec{
			p.spec("nvidia-caps/nvidia-cap" + strconv.Itoa(in.GICapMinor)),
			p.spec("nvidia-caps/nvidia-cap" + strconv.Itoa(in.CICapMinor)),
		}
		p.cdiNames[in.UUID] = in.UUID
		if opts.CDI.NameStrategy == "index" {
			p.cdiNames[in.UUID] = fmt.Sprintf("%d:%d", in.Parent.Index, in.Index)
		}
	}
	return p, nil
}
