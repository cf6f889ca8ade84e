package nvml

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/gpuslice/gpuslice/pkg/contract"
)

// Options configure the NVML backend.
type Options struct {
	// LibraryPath is the NVML library to load; empty means the system's
	// libnvidia-ml.so.1.
	LibraryPath string
	// ProbeInterval is how often every GPU is probed for being lost, which
	// is also how late a lost GPU or a recovery is noticed at most.
	ProbeInterval time.Duration
	// XIDRecovery is how long a GPU must go without a new XID, answering
	// probes, before it is reported healthy again. Zero never recovers.
	XIDRecovery time.Duration
	// IgnoredXIDs never make a GPU unhealthy.
	IgnoredXIDs []uint64
	// Logger receives warnings about GPUs that cannot be watched.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// SysfsRoot is where sysfs is mounted, for GPUs' NUMA nodes.
	SysfsRoot string
	// MIGMinorsFile is the driver's list of MIG capability device minors.
	MIGMinorsFile string
}

// DefaultOptions returns the options the agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		ProbeInterval: 5 * time.Second,
		XIDRecovery:   5 * time.Minute,
		IgnoredXIDs:   append([]uint64(nil), DefaultIgnoredXIDs...),
		SysfsRoot:     contract.SysfsRoot,
		MIGMinorsFile: contract.MIGMinorsFile,
	}
}

// NVML is the Backend over the NVIDIA driver's NVML library.
type NVML struct {
	lib  gonvml.Interface
	opts Options

	mu       sync.Mutex
	handle   map[string]gonvml.Device // by UUID
	lastSeen map[string]uint64        // by UUID: newest process sample timestamp, µs
	gpm      map[string]*gpmReader    // by MIG UUID

	limitsAPI limitsAPI
}

var _ Backend = (*NVML)(nil)

// New loads and initialises NVML. A missing library is ErrLibraryNotFound.
func New(opts Options) (*NVML, error) {
	if opts.ProbeInterval <= 0 {
		return nil, fmt.Errorf("probe interval must be positive, got %s", opts.ProbeInterval)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	var libOpts []gonvml.LibraryOption
	if opts.LibraryPath != "" {
		libOpts = append(libOpts, gonvml.WithLibraryPath(opts.LibraryPath))
	}
	lib := gonvml.New(libOpts...)
	switch ret := lib.Init(); ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_LIBRARY_NOT_FOUND:
		where := "libnvidia-ml.so.1 on the library path"
		if opts.LibraryPath != "" {
			where = opts.LibraryPath
		}
		return nil, fmt.Errorf("%w (looked for %s): install the NVIDIA driver, set --nvml-library, or use --gpu-backend=fake on nodes without GPUs", ErrLibraryNotFound, where)
	default:
		return nil, &ErrCall{Call: "nvmlInit", Err: ret}
	}
	return &NVML{lib: lib, opts: opts, handle: map[string]gonvml.Device{}, lastSeen: map[string]uint64{}, gpm: map[string]*gpmReader{}}, nil
}

// Close shuts NVML down.
func (n *NVML) Close() error {
	n.closeGPM()
	if ret := n.lib.Shutdown(); ret != gonvml.SUCCESS {
		return &ErrCall{Call: "nvmlShutdown", Err: ret}
	}
	return nil
}

// System returns the driver and CUDA versions.
func (n *NVML) System() (SystemInfo, error) {
	drv, ret := n.lib.SystemGetDriverVersion()
	if ret != gonvml.SUCCESS {
		return SystemInfo{}, &ErrCall{Call: "nvmlSystemGetDriverVersion", Err: ret}
	}
	cuda, ret := n.lib.SystemGetCudaDriverVersion()
	if ret != gonvml.SUCCESS {
		return SystemInfo{}, &ErrCall{Call: "nvmlSystemGetCudaDriverVersion", Err: ret}
	}
	return SystemInfo{DriverVersion: drv, CUDADriverVersion: cuda}, nil
}

// Devices enumerates the GPUs. A GPU that fails to answer is left out and
// its failure joined into the returned error; the others are returned.
func (n *NVML) Devices() ([]Device, error) {
	handles, err := n.handles()
	if err != nil && len(handles) == 0 {
		return nil, err
	}
	devs := make([]Device, 0, len(handles))
	errs := []error{err}
	var minors map[string]int
	for _, h := range handles {
		d, derr := describe(h.dev, h.index)
		if derr != nil {
			errs = append(errs, fmt.Errorf("gpu %d: %w", h.index, derr))
			continue
		}
		d.NUMANode = NUMANode(n.opts.SysfsRoot, d.PCIBusID)
		d.PCIeRoot = PCIeRoot(n.opts.SysfsRoot, d.PCIBusID)
		if d.MIG.Current {
			if minors == nil {
				minors = n.migMinors()
			}
			// A GPU whose instances cannot be read is still known to be in
			// MIG mode, and so never cut whole; it offers no instance.
			if d.MIG.Instances, derr = migInstances(h.dev, d, minors); derr != nil {
				errs = append(errs, fmt.Errorf("gpu %d: MIG instances: %w", h.index, derr))
			}
		}
		devs = append(devs, d)
	}
	return devs, errors.Join(errs...)
}

type handle struct {
	index int
	dev   gonvml.Device
}

func (n *NVML) handles() ([]handle, error) {
	count, ret := n.lib.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, &ErrCall{Call: "nvmlDeviceGetCount", Err: ret}
	}
	var out []handle
	var errs []error
	for i := range count {
		d, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			errs = append(errs, fmt.Errorf("gpu %d: %w", i, &ErrCall{Call: "nvmlDeviceGetHandleByIndex", Err: ret}))
			continue
		}
		out = append(out, handle{index: i, dev: d})
	}
	return out, errors.Join(errs...)
}

func describe(d gonvml.Device, index int) (Device, error) {
	out := Device{Index: index}
	var ret gonvml.Return
	if out.UUID, ret = d.GetUUID(); ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetUUID", Err: ret}
	}
	if out.Model, ret = d.GetName(); ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetName", Err: ret}
	}
	if out.Minor, ret = d.GetMinorNumber(); ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetMinorNumber", Err: ret}
	}
	mem, ret := d.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetMemoryInfo", Err: ret}
	}
	out.MemoryBytes = mem.Total
	if out.ComputeMajor, out.ComputeMinor, ret = d.GetCudaComputeCapability(); ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetCudaComputeCapability", Err: ret}
	}
	pci, ret := d.GetPciInfo()
	if ret != gonvml.SUCCESS {
		return Device{}, &ErrCall{Call: "nvmlDeviceGetPciInfo", Err: ret}
	}
	out.PCIBusID = cString(pci.BusId[:])
	// A GPU without MIG answers NOT_SUPPORTED; any other failure leaves
	// it described as not MIG-capable rather than not described.
	current, pending, ret := d.GetMigMode()
	out.MIGCapable = ret == gonvml.SUCCESS
	if out.MIGCapable {
		out.MIG.Current = current == gonvml.DEVICE_MIG_ENABLE
		out.MIG.Pending = pending == gonvml.DEVICE_MIG_ENABLE
	}
	return out, nil
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// WatchHealth reports XID critical errors as they arrive and probes every
// GPU each ProbeInterval for being lost or recovered.
func (n *NVML) WatchHealth(ctx context.Context, report func(Health)) error {
	handles, err := n.handles()
	if err != nil && len(handles) == 0 {
		return fmt.Errorf("watch health: %w", err)
	}
	type watched struct {
		uuid string
		dev  gonvml.Device
	}
	var gpus []watched
	for _, h := range handles {
		uuid, ret := h.dev.GetUUID()
		if ret != gonvml.SUCCESS {
			n.opts.Logger.Warn("gpu not watched for health", "gpu", h.index, "err", &ErrCall{Call: "nvmlDeviceGetUUID", Err: ret})
			continue
		}
		gpus = append(gpus, watched{uuid: uuid, dev: h.dev})
	}
	set, ret := n.lib.EventSetCreate()
	if ret != gonvml.SUCCESS {
		return fmt.Errorf("watch health: %w", &ErrCall{Call: "nvmlEventSetCreate", Err: ret})
	}
	defer func() { _ = set.Free() }() // freeing at the end of watching; nothing to do on failure

	order := make([]string, len(gpus))
	for i, g := range gpus {
		order[i] = g.uuid
		supported, ret := g.dev.GetSupportedEventTypes()
		if ret != gonvml.SUCCESS {
			n.opts.Logger.Warn("xid events unavailable", "uuid", g.uuid, "err", &ErrCall{Call: "nvmlDeviceGetSupportedEventTypes", Err: ret})
			continue
		}
		mask := supported & uint64(gonvml.EventTypeXidCriticalError)
		if mask == 0 {
			n.opts.Logger.Warn("xid events unsupported", "uuid", g.uuid)
			continue
		}
		if ret := g.dev.RegisterEvents(mask, set); ret != gonvml.SUCCESS {
			n.opts.Logger.Warn("xid events unavailable", "uuid", g.uuid, "err", &ErrCall{Call: "nvmlDeviceRegisterEvents", Err: ret})
		}
	}

	tr := newHealthTracker(order, n.opts.XIDRecovery, n.opts.IgnoredXIDs)
	for _, h := range tr.current(order) {
		report(h)
	}
	// Wait in short slices so cancellation is noticed promptly even with a
	// long probe interval.
	wait := min(n.opts.ProbeInterval, time.Second)
	lastProbe := n.opts.Now()
	for ctx.Err() == nil {
		data, ret := set.Wait(uint32(wait.Milliseconds()))
		now := n.opts.Now()
		if ret == gonvml.SUCCESS && data.EventType&uint64(gonvml.EventTypeXidCriticalError) != 0 && data.Device != nil {
			n.reportXID(tr, data, now, report)
		}
		if now.Sub(lastProbe) < n.opts.ProbeInterval && ret != gonvml.ERROR_GPU_IS_LOST {
			continue
		}
		lastProbe = now
		for _, g := range gpus {
			_, r := g.dev.GetMemoryInfo()
			if h, changed := tr.probe(g.uuid, r == gonvml.ERROR_GPU_IS_LOST, now); changed {
				report(h)
			}
			if r != gonvml.ERROR_GPU_IS_LOST {
				for _, h := range tr.probeInstances(g.uuid, now) {
					report(h)
				}
			}
		}
	}
	return nil
}

// PCIClass returns the PCI class of the device with the given NVML bus ID,
// as sysfs gives it (e.g. "0x030200", a 3D controller: a GPU in compute
// mode), or "" when sysfs does not say.
func PCIClass(sysfsRoot, busID string) string {
	addr := SysfsAddress(busID)
	if addr == "" {
		return ""
	}
	// addr has no path separators; sysfsRoot is the operator's flag.
	data, err := os.ReadFile(filepath.Join(sysfsRoot, "bus", "pci", "devices", addr, "class")) //nolint:gosec // see above
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// SysfsAddress turns NVML's bus ID into sysfs's device name, or "" when it
// cannot be one.
func SysfsAddress(busID string) string {
	addr := strings.ToLower(busID)
	// NVML pads the PCI domain to 8 hex digits; sysfs uses 4.
	if len(addr) == len("00000000:07:00.0") && strings.HasPrefix(addr, "0000") {
		addr = addr[4:]
	}
	if strings.ContainsAny(addr, "/\\") || addr == "." || addr == ".." {
		return ""
	}
	return addr
}

// NUMANode returns the NUMA node of the PCI device with the given NVML bus
// ID, read from <sysfsRoot>/bus/pci/devices/<address>/numa_node, or -1 when
// sysfs does not say (no such file, or a single-node machine's -1).
func NUMANode(sysfsRoot, busID string) int {
	addr := SysfsAddress(busID)
	if addr == "" {
		return -1
	}
	// addr has no path separators (checked above); sysfsRoot is the operator's flag.
	data, err := os.ReadFile(filepath.Join(sysfsRoot, "bus", "pci", "devices", addr, "numa_node")) //nolint:gosec // see above
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// PCIeRoot returns the PCIe root complex ("pci<domain>:<bus>") the PCI
// device with the given NVML bus ID sits under, from where
// <sysfsRoot>/bus/pci/devices/<address> links to (its path under
// devices/), or "" when sysfs does not say.
func PCIeRoot(sysfsRoot, busID string) string {
	addr := SysfsAddress(busID)
	if addr == "" {
		return ""
	}
	target, err := os.Readlink(filepath.Join(sysfsRoot, "bus", "pci", "devices", addr))
	if err != nil {
		return ""
	}
	for _, part := range strings.Split(filepath.ToSlash(target), "/") {
		if len(part) > len("pci") && strings.HasPrefix(part, "pci") && strings.Contains(part, ":") {
			return part
		}
	}
	return ""
}

// device returns the handle of the GPU or MIG instance with the given
// UUID.
func (n *NVML) device(uuid string) (gonvml.Device, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d, ok := n.handle[uuid]; ok {
		return d, nil
	}
	d, ret := n.lib.DeviceGetHandleByUUID(uuid)
	if ret != gonvml.SUCCESS {
		return nil, &ErrCall{Call: "nvmlDeviceGetHandleByUUID", Err: ret}
	}
	// A MIG instance's handle is looked up every time: once the instance
	// is destroyed, a handle kept could name the instance created in its
	// place.
	if !IsMIGUUID(uuid) {
		n.handle[uuid] = d
	}
	return d, nil
}

// Sample reads utilization, memory, temperature, power, energy and SM clock.
func (n *NVML) Sample(uuid string) (Sample, error) {
	d, err := n.device(uuid)
	if err != nil {
		return Sample{}, err
	}
	if IsMIGUUID(uuid) {
		return n.sampleInstance(d, uuid)
	}
	s := Sample{UUID: uuid}
	util, ret := d.GetUtilizationRates()
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetUtilizationRates", Err: ret}
	}
	s.Utilization = float64(util.Gpu) / 100
	mem, ret := d.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetMemoryInfo", Err: ret}
	}
	s.MemoryUsedBytes = mem.Used
	temp, ret := d.GetTemperature(gonvml.TEMPERATURE_GPU)
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetTemperature", Err: ret}
	}
	s.TemperatureCelsius = float64(temp)
	mw, ret := d.GetPowerUsage()
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetPowerUsage", Err: ret}
	}
	s.PowerWatts = float64(mw) / 1000
	mj, ret := d.GetTotalEnergyConsumption()
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetTotalEnergyConsumption", Err: ret}
	}
	s.EnergyJoules = float64(mj) / 1000
	mhz, ret := d.GetClockInfo(gonvml.CLOCK_SM)
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetClockInfo", Err: ret}
	}
	s.SMClockHertz = float64(mhz) * 1e6
	return s, nil
}

// sampleInstance reads a MIG instance: its memory, and its utilization.
// NVML measures no process on a MIG device, and answers NOT_SUPPORTED for
// its utilization; GPM (Hopper and later) measures the instance's SM
// utilization instead, and without it the instance's compute is
// unmeasured, never idle. Temperature, power, energy and clocks are its
// GPU's, not read here.
func (n *NVML) sampleInstance(d gonvml.Device, uuid string) (Sample, error) {
	s := Sample{UUID: uuid, ProcessUtilizationUnsupported: true}
	mem, ret := d.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetMemoryInfo", Err: ret}
	}
	s.MemoryUsedBytes = mem.Used
	util, ret := d.GetUtilizationRates()
	switch ret {
	case gonvml.SUCCESS:
		s.Utilization = float64(util.Gpu) / 100
	case gonvml.ERROR_NOT_SUPPORTED:
		var ok bool
		s.Utilization, ok = n.instanceUtilization(d, uuid)
		s.UtilizationUnsupported = !ok
	default:
		return Sample{}, &ErrCall{Call: "nvmlDeviceGetUtilizationRates", Err: ret}
	}
	return s, nil
}

// Processes lists the GPU's compute processes with their memory and their
// SM utilization since the previous call, averaged over the driver's
// samples in that window. On a MIG instance (uuid "MIG-...") they are the
// instance's processes, with no SM utilization where the driver samples
// none.
func (n *NVML) Processes(uuid string) ([]Process, error) {
	d, err := n.device(uuid)
	if err != nil {
		return nil, err
	}
	infos, ret := d.GetComputeRunningProcesses()
	if ret != gonvml.SUCCESS {
		return nil, &ErrCall{Call: "nvmlDeviceGetComputeRunningProcesses", Err: ret}
	}
	n.mu.Lock()
	since := n.lastSeen[uuid]
	n.mu.Unlock()
	samples, ret := d.GetProcessUtilization(since)
	switch ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_NOT_FOUND:
		// No process ran on the GPU since the last call.
		samples = nil
	case gonvml.ERROR_NOT_SUPPORTED:
		if !IsMIGUUID(uuid) {
			return nil, &ErrCall{Call: "nvmlDeviceGetProcessUtilization", Err: ret}
		}
		// The driver samples no process on a MIG instance: its
		// processes' SM use is unknown (Sample.ComputeUnmeasured).
		samples = nil
	default:
		return nil, &ErrCall{Call: "nvmlDeviceGetProcessUtilization", Err: ret}
	}
	read := make([]UtilizationSample, len(samples))
	for i, s := range samples {
		read[i] = UtilizationSample{PID: int(s.Pid), TimeStamp: s.TimeStamp, SMUtil: s.SmUtil}
	}
	util, newest := AverageSamples(read, since)
	n.mu.Lock()
	n.lastSeen[uuid] = newest
	n.mu.Unlock()
	out := make([]Process, 0, len(infos))
	for _, info := range infos {
		if info.UsedGpuMemory == valueNotAvailable {
			// The driver withholds it (some do on MIG without enough
			// privilege): the processes' memory is unknown, and the
			// device blind for this sample, never a made-up number a
			// watchdog would act on.
			return nil, &ErrCall{Call: "nvmlDeviceGetComputeRunningProcesses", Err: fmt.Errorf("pid %d: usedGpuMemory not available", info.Pid)}
		}
		out = append(out, Process{PID: int(info.Pid), MemoryBytes: info.UsedGpuMemory, SMUtilization: util[int(info.Pid)]})
	}
	return out, nil
}

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE as an unsigned long long:
// what the driver reports for a process's memory it does not give.
const valueNotAvailable = ^uint64(0)

// UtilizationSample is one per-process sample of
// nvmlDeviceGetProcessUtilization: a process's SM utilization, in integer
// percent, over the sample period that ended at TimeStamp (µs).
type UtilizationSample struct {
	PID       int
	TimeStamp uint64
	SMUtil    uint32
}

// AverageSamples turns the samples read since the timestamp since into
// each process's SM utilization, 0..1: the mean of its samples, each of
// which covers one sample period. It returns the newest timestamp, to pass
// as since next time.
func AverageSamples(samples []UtilizationSample, since uint64) (map[int]float64, uint64) {
	sum := map[int]uint64{}
	count := map[int]uint64{}
	newest := since
	for _, s := range samples {
		if s.TimeStamp <= since {
			continue
		}
		sum[s.PID] += uint64(s.SMUtil)
		count[s.PID]++
		newest = max(newest, s.TimeStamp)
	}
	out := make(map[int]float64, len(sum))
	for pid, c := range count {
		out[pid] = min(float64(sum[pid])/float64(c)/100, 1)
	}
	return out, newest
}
