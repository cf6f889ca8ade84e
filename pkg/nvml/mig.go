package nvml

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpuslice/gpuslice/pkg/gpudev"
)

// migInstances reads the MIG devices of a GPU in MIG mode, in index
// order. The capability minors come from the driver's mig-minors list
// (minors, keyed "gpu<minor>/gi<id>/access" and
// "gpu<minor>/gi<id>/ci<id>/access"); an instance it does not list has
// them -1.
func migInstances(d gonvml.Device, gpu Device, minors map[string]int) ([]gpudev.MIGInstance, error) {
	max, ret := d.GetMaxMigDeviceCount()
	if ret != gonvml.SUCCESS {
		return nil, &ErrCall{Call: "nvmlDeviceGetMaxMigDeviceCount", Err: ret}
	}
	var out []gpudev.MIGInstance
	for i := range max {
		m, ret := d.GetMigDeviceHandleByIndex(i)
		if ret == gonvml.ERROR_NOT_FOUND {
			continue // no MIG device at this index
		}
		if ret != gonvml.SUCCESS {
			return out, &ErrCall{Call: "nvmlDeviceGetMigDeviceHandleByIndex", Err: ret}
		}
		in, err := migInstance(d, m, i, gpu, minors)
		if err != nil {
			return out, fmt.Errorf("MIG device %d: %w", i, err)
		}
		out = append(out, in)
	}
	return out, nil
}

func migInstance(parent, m gonvml.Device, index int, gpu Device, minors map[string]int) (gpudev.MIGInstance, error) {
	in := gpudev.MIGInstance{Index: index, GIProfileID: -1, Placement: -1}
	var ret gonvml.Return
	if in.UUID, ret = m.GetUUID(); ret != gonvml.SUCCESS {
		return in, &ErrCall{Call: "nvmlDeviceGetUUID", Err: ret}
	}
	if in.GPUInstanceID, ret = m.GetGpuInstanceId(); ret != gonvml.SUCCESS {
		return in, &ErrCall{Call: "nvmlDeviceGetGpuInstanceId", Err: ret}
	}
	if in.ComputeInstanceID, ret = m.GetComputeInstanceId(); ret != gonvml.SUCCESS {
		return in, &ErrCall{Call: "nvmlDeviceGetComputeInstanceId", Err: ret}
	}
	a, ret := m.GetAttributes()
	if ret != gonvml.SUCCESS {
		return in, &ErrCall{Call: "nvmlDeviceGetAttributes", Err: ret}
	}
	in.MemoryBytes = a.MemorySizeMB << 20
	in.Multiprocessors = int(a.MultiprocessorCount)
	in.GISlices, in.CISlices = int(a.GpuInstanceSliceCount), int(a.ComputeInstanceSliceCount)
	in.CopyEngines, in.Decoders, in.Encoders = int(a.SharedCopyEngineCount), int(a.SharedDecoderCount), int(a.SharedEncoderCount)
	in.JPEGDecoders, in.OFAs = int(a.SharedJpegCount), int(a.SharedOfaCount)
	// The GPU instance's profile tells media extensions apart; reading it
	// needs the driver's MIG monitor capability. Without it, a one- or
	// two-slice GPU instance with an optical-flow engine is taken for one
	// with media extensions: only those (REV1) profiles have one.
	media := in.OFAs > 0 && in.GISlices <= 2
	if gi, ret := parent.GetGpuInstanceById(in.GPUInstanceID); ret == gonvml.SUCCESS {
		if info, ret := gi.GetInfo(); ret == gonvml.SUCCESS {
			in.GIProfileID = int(info.ProfileId)
			in.Placement, in.PlacementSize = int(info.Placement.Start), int(info.Placement.Size)
			media = info.ProfileId == gonvml.GPU_INSTANCE_PROFILE_1_SLICE_REV1 || info.ProfileId == gonvml.GPU_INSTANCE_PROFILE_2_SLICE_REV1
		}
	}
	in.Profile = gpudev.MIGProfileName(in.GISlices, in.CISlices, in.MemoryBytes, gpu.MemoryBytes, media)
	in.GICapMinor, in.CICapMinor = -1, -1
	if v, ok := minors[fmt.Sprintf("gpu%d/gi%d/access", gpu.Minor, in.GPUInstanceID)]; ok {
		in.GICapMinor = v
	}
	if v, ok := minors[fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpu.Minor, in.GPUInstanceID, in.ComputeInstanceID)]; ok {
		in.CICapMinor = v
	}
	return in, nil
}

// migMinors reads the driver's MIG capability minors; an unreadable file
// leaves every instance's minors unknown (the device plugin then refuses
// to hand out device nodes for them, saying why).
func (n *NVML) migMinors() map[string]int {
	data, err := os.ReadFile(n.opts.MIGMinorsFile)
	if err == nil {
		var m map[string]int
		if m, err = ParseMIGMinors(data); err == nil {
			return m
		}
	}
	n.opts.Logger.Warn("MIG capability minors unreadable", "path", n.opts.MIGMinorsFile, "err", err)
	return map[string]int{}
}

// ParseMIGMinors parses /proc/driver/nvidia-caps/mig-minors: lines of a
// capability name and its device minor ("gpu0/gi1/access 12").
func ParseMIGMinors(data []byte) (map[string]int, error) {
	out := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		name, v, ok := strings.Cut(line, " ")
		minor, err := strconv.Atoi(strings.TrimSpace(v))
		if !ok || err != nil || minor < 0 || minor > 1<<20 || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("mig-minors line %d: %q is not \"<capability> <minor>\"", n, line)
		}
		out[name] = minor
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mig-minors: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("mig-minors lists no capability")
	}
	return out, nil
}

// noInstance is what NVML puts in an event's GPU or compute instance ID
// when the event is not about one.
const noInstance = 0xFFFFFFFF

// reportXID reports an XID event: on the GPU, or, where the driver names
// a GPU instance, on each of its MIG devices (one compute instance, or
// every one when the event names none).
func (n *NVML) reportXID(tr *healthTracker, data gonvml.EventData, now time.Time, report func(Health)) {
	uuid, r := data.Device.GetUUID()
	if r != gonvml.SUCCESS {
		return
	}
	if data.GpuInstanceId == noInstance {
		if h, changed := tr.xid(uuid, data.EventData, now); changed {
			report(h)
		}
		return
	}
	instances, err := migInstances(data.Device, Device{UUID: uuid, Minor: -1}, nil)
	matched := false
	for _, in := range instances {
		if uint32(in.GPUInstanceID) != data.GpuInstanceId || (data.ComputeInstanceId != noInstance && uint32(in.ComputeInstanceID) != data.ComputeInstanceId) {
			continue
		}
		matched = true
		if h, changed := tr.instanceXID(in.UUID, uuid, data.EventData, now); changed {
			report(h)
		}
	}
	if !matched {
		// An instance that cannot be told (destroyed since, or its MIG
		// devices unreadable): the GPU takes the XID, never nobody.
		n.opts.Logger.Warn("xid on a MIG instance that cannot be found: the GPU takes it", "uuid", uuid,
			"gpu_instance", data.GpuInstanceId, "compute_instance", data.ComputeInstanceId, "xid", data.EventData, "err", err)
		if h, changed := tr.xid(uuid, data.EventData, now); changed {
			report(h)
		}
	}
}
