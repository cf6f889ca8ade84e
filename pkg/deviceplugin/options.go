package deviceplugin

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/vgpu"
)

// Options configure a Plugin.
type Options struct {
	// ResourceName is the extended resource offered, e.g. "nvidia.com/vgpu".
	ResourceName string
	// PluginDir is the kubelet's device plugin directory; the kubelet's
	// registration socket is PluginDir/kubelet.sock.
	PluginDir string
	// SocketName is the file name of this plugin's socket in PluginDir.
	SocketName string
	// UniqueSocket names the socket per instance: SocketName with a
	// suffix unique to this process ("gpuslice-<id>.sock"), and removes
	// the sockets of earlier instances that no longer answer. The kubelet
	// keys a plugin by its socket path, and since 1.36 a registration on a
	// path whose previous plugin is still connected (an agent killed while
	// its successor starts) is refused and leaves that path refused until
	// the kubelet restarts; a new path is always accepted.
	UniqueSocket bool
	// Placement chooses GPUs in GetPreferredAllocation.
	Placement vgpu.Policy
	// Span is what becomes of a container's request no one GPU can hold:
	// contract.SpanFewest spans the fewest GPUs, contract.SpanNever
	// refuses it (the pod fails admission).
	Span string
	// SpanHoldBack, on a SpanNever node, is how long free slices are
	// offered Unhealthy after a refusal, so that the scheduler does not
	// send the pod (or its ReplicaSet's next) straight back: it doubles
	// with each refusal up to SpanHoldBackMax. 0 holds nothing back.
	SpanHoldBack, SpanHoldBackMax time.Duration
	// DeviceSpecs makes Allocate return the GPU device nodes, for runtimes
	// without the NVIDIA container hook.
	DeviceSpecs bool
	// DevRoot is the host directory holding the nvidia device nodes.
	DevRoot string
	// CDI, when Enabled, makes Allocate return CDI device names.
	CDI CDIOptions
	// MPS, when Enabled, makes Allocate set MPS limits and mount the MPS
	// pipe directory.
	MPS MPSOptions
	// RegisterRetry is how often registration is retried while the kubelet
	// does not answer.
	RegisterRetry time.Duration
	// DRAGPUs, when set, are the GPUs claims of gpuslice's DRA driver hold
	// (its record of prepared claims). Allocate refuses slices of them,
	// and every Allocate while they cannot be told: the two front ends
	// never share a GPU, since neither counts the other's holdings.
	DRAGPUs func() (map[string]bool, error)
	// FrontEnds, when set (with DRAGPUs), is the node's front-end lock:
	// Allocate holds it across its check of DRAGPUs and its record of
	// the GPUs it hands out, as the DRA driver holds it across Prepare,
	// so that the two never both pass on one GPU.
	FrontEnds FrontEnds
	// DRAPoll is how often DRAGPUs is read to offer the slices of GPUs
	// claims hold as Unhealthy (the kubelet then neither picks nor is
	// steered to them).
	DRAPoll time.Duration
	// NoSlices makes ListAndWatch advertise no slices, so the node's
	// allocatable nvidia.com/vgpu is 0: the scheduler then serves pods
	// asking for it through DRA (a DeviceClass whose extendedResourceName
	// is the resource), which it does only on nodes that do not advertise
	// the resource themselves.
	NoSlices bool
	// Logger receives the plugin's logs.
	Logger *slog.Logger
}

// FrontEnds is the node's lock shared by its two GPU front ends, and the
// device plugin's record of what it handed out (*frontend.Guard).
type FrontEnds interface {
	Hold() (release func(), err error)
	Granted(uuids []string) error
}

// CDIOptions configure CDI device names in Allocate responses.
type CDIOptions struct {
	// Enabled turns CDI device names on.
	Enabled bool
	// Kind is the CDI kind, e.g. "nvidia.com/gpu".
	Kind string
	// NameStrategy is "uuid" (kind=GPU-...) or "index" (kind=0).
	NameStrategy string
}

// MPSOptions configure NVIDIA MPS limits in Allocate responses.
type MPSOptions struct {
	// Enabled turns MPS limits on.
	Enabled bool
	// PipeDirectory is the MPS control daemon's pipe directory on the host,
	// mounted at the same path in containers.
	PipeDirectory string
}

// DefaultOptions returns the options gpu-agent uses unless configured.
func DefaultOptions() Options {
	return Options{
		ResourceName:    contract.ResourceName,
		PluginDir:       pluginapi.DevicePluginPath,
		SocketName:      "gpuslice.sock",
		Placement:       vgpu.Binpack,
		Span:            contract.SpanFewest,
		SpanHoldBack:    30 * time.Second,
		SpanHoldBackMax: 5 * time.Minute,
		DeviceSpecs:     true,
		DevRoot:         "/dev",
		CDI:             CDIOptions{Kind: "nvidia.com/gpu", NameStrategy: "uuid"},
		MPS:             MPSOptions{PipeDirectory: contract.MPSPipeDirectory},
		RegisterRetry:   5 * time.Second,
		DRAPoll:         time.Second,
	}
}

// Validate reports the first option that cannot work.
func (o Options) Validate() error {
	if err := validResourceName(o.ResourceName); err != nil {
		return err
	}
	if o.PluginDir == "" || !filepath.IsAbs(o.PluginDir) {
		return fmt.Errorf("device plugin dir %q must be an absolute path", o.PluginDir)
	}
	if o.SocketName == "" || strings.ContainsRune(o.SocketName, '/') || o.SocketName == "kubelet.sock" {
		return fmt.Errorf("socket name %q must be a plain file name other than kubelet.sock", o.SocketName)
	}
	// A unix socket path must fit sun_path (108 bytes with the NUL).
	p := filepath.Join(o.PluginDir, o.SocketName)
	if o.UniqueSocket {
		p += uniqueSuffixExample
	}
	if len(p) > 107 {
		return fmt.Errorf("socket path %q is longer than 107 bytes", p)
	}
	if _, err := vgpu.ParsePolicy(string(o.Placement)); err != nil {
		return err
	}
	if _, err := contract.ParseSpan(o.Span); err != nil {
		return err
	}
	if o.SpanHoldBack < 0 || o.SpanHoldBackMax < o.SpanHoldBack {
		return fmt.Errorf("span hold-back %s must be at least 0 and at most its bound %s", o.SpanHoldBack, o.SpanHoldBackMax)
	}
	if o.DeviceSpecs && !filepath.IsAbs(o.DevRoot) {
		return fmt.Errorf("dev root %q must be an absolute path", o.DevRoot)
	}
	if o.CDI.Enabled {
		if !strings.Contains(o.CDI.Kind, "/") || strings.ContainsAny(o.CDI.Kind, "= ") {
			return fmt.Errorf("CDI kind %q must look like vendor.com/class", o.CDI.Kind)
		}
		if o.CDI.NameStrategy != "uuid" && o.CDI.NameStrategy != "index" {
			return fmt.Errorf("CDI name strategy %q must be uuid or index", o.CDI.NameStrategy)
		}
	}
	if o.MPS.Enabled && !filepath.IsAbs(o.MPS.PipeDirectory) {
		return fmt.Errorf("MPS pipe directory %q must be an absolute path", o.MPS.PipeDirectory)
	}
	if o.DRAGPUs != nil && o.DRAPoll <= 0 {
		return errors.New("DRA poll interval must be positive")
	}
	if o.RegisterRetry <= 0 {
		return errors.New("register retry interval must be positive")
	}
	return nil
}

// validResourceName accepts "<domain>/<name>" as the kubelet does for
// extended resources.
func validResourceName(s string) error {
	domain, name, ok := strings.Cut(s, "/")
	if !ok || domain == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("resource name %q must be <domain>/<name>", s)
	}
	if !strings.Contains(domain, ".") || strings.HasPrefix(domain, "kubernetes.io") || strings.HasSuffix(domain, ".kubernetes.io") {
		return fmt.Errorf("resource name %q needs a fully qualified domain outside kubernetes.io", s)
	}
	for _, r := range s {
		if !resourceNameChar(r) {
			return fmt.Errorf("resource name %q has character %q", s, r)
		}
	}
	return nil
}

func resourceNameChar(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("-._/", r)
}
