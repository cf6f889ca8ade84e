package nvml

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// The two structs of nvml.h (r615+); go-nvml v0.13 has no binding for the
// calls that take them, so they are called through the library go-nvml
// already loaded.
typedef struct {
	const char *nameSpace;
	unsigned long long softLimit;
	unsigned long long hardLimit;
} gs_set_limits_t;

typedef struct {
	const char *nameSpace;
	unsigned long long softLimit;
	unsigned long long hardLimit;
	unsigned long long currentUsed;
} gs_get_limits_t;

typedef int (*gs_by_uuid_fn)(const char *, void **);
typedef int (*gs_set_fn)(void *, gs_set_limits_t *);
typedef int (*gs_get_fn)(void *, gs_get_limits_t *);

typedef struct {
	gs_by_uuid_fn byUUID;
	gs_set_fn set;
	gs_get_fn get;
} gs_limits_api;

// gs_limits_open finds the three calls in the already loaded NVML library.
// It returns 0, or 1 when the library is not loaded, 2 when the driver has
// no per-cgroup memory limits.
static int gs_limits_open(const char *path, gs_limits_api *api) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (!lib) return 1;
	api->byUUID = (gs_by_uuid_fn)dlsym(lib, "nvmlDeviceGetHandleByUUID");
	api->set = (gs_set_fn)dlsym(lib, "nvmlDeviceSetMemoryLimits_v1");
	api->get = (gs_get_fn)dlsym(lib, "nvmlDeviceGetMemoryLimits_v1");
	dlclose(lib); // go-nvml keeps its own reference
	if (!api->byUUID) return 1;
	if (!api->set || !api->get) return 2;
	return 0;
}

static int gs_limits_set(gs_limits_api api, const char *uuid, const char *ns, unsigned long long soft, unsigned long long hard) {
	void *dev = 0;
	int ret = api.byUUID(uuid, &dev);
	if (ret) return ret;
	gs_set_limits_t l = { ns, soft, hard };
	return api.set(dev, &l);
}

static int gs_limits_get(gs_limits_api api, const char *uuid, const char *ns, gs_get_limits_t *out) {
	void *dev = 0;
	int ret = api.byUUID(uuid, &dev);
	if (ret) return ret;
	out->nameSpace = ns;
	return api.get(dev, out);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// limitsAPI resolves the memory-limit calls once.
type limitsAPI struct {
	once sync.Once
	api  C.gs_limits_api
	err  error
}

func (n *NVML) limits() (*C.gs_limits_api, error) {
	n.limitsAPI.once.Do(func() {
		path := n.opts.LibraryPath
		if path == "" {
			path = "libnvidia-ml.so.1"
		}
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		switch C.gs_limits_open(cpath, &n.limitsAPI.api) { //nolint:gocritic // cgo's generated checks trip dupSubExpr
		case 0:
		case 2:
			n.limitsAPI.err = fmt.Errorf("%w: the driver has no nvmlDeviceSetMemoryLimits_v1 (needs r615 or later)", ErrNotSupported)
		default:
			n.limitsAPI.err = fmt.Errorf("%w: NVML library %s is not loaded", ErrNotSupported, path)
		}
	})
	if n.limitsAPI.err != nil {
		return nil, n.limitsAPI.err
	}
	return &n.limitsAPI.api, nil
}

// limitsErr turns an NVML return code into an error naming the call.
func limitsErr(call string, ret C.int) error {
	r := gonvml.Return(ret)
	err := error(r)
	if r == gonvml.ERROR_NOT_SUPPORTED || r == gonvml.ERROR_FUNCTION_NOT_FOUND {
		err = fmt.Errorf("%w: %w", ErrNotSupported, r)
	}
	return &ErrCall{Call: call, Err: err}
}

// MemoryLimitsSupported asks the driver for the limits of cgroupDir on the
// first GPU: drivers without per-cgroup memory limits refuse.
func (n *NVML) MemoryLimitsSupported(cgroupDir string) error {
	if _, err := n.limits(); err != nil {
		return err
	}
	hs, err := n.handles()
	if len(hs) == 0 {
		if err == nil {
			err = errors.New("no GPUs")
		}
		return fmt.Errorf("check driver memory limits: %w", err)
	}
	uuid, ret := hs[0].dev.GetUUID()
	if ret != gonvml.SUCCESS {
		return fmt.Errorf("check driver memory limits: %w", &ErrCall{Call: "nvmlDeviceGetUUID", Err: ret})
	}
	_, err = n.MemoryLimits(uuid, cgroupDir)
	return err
}

// SetMemoryLimits sets one cgroup's limits on one GPU.
func (n *NVML) SetMemoryLimits(uuid, cgroupDir string, softBytes, hardBytes uint64) error {
	api, err := n.limits()
	if err != nil {
		return err
	}
	cu, cns := C.CString(uuid), C.CString(cgroupDir)
	defer C.free(unsafe.Pointer(cu))
	defer C.free(unsafe.Pointer(cns))
	if ret := C.gs_limits_set(*api, cu, cns, C.ulonglong(softBytes), C.ulonglong(hardBytes)); ret != 0 {
		return limitsErr("nvmlDeviceSetMemoryLimits_v1", ret)
	}
	return nil
}

// MemoryLimits reads one cgroup's limits on one GPU.
func (n *NVML) MemoryLimits(uuid, cgroupDir string) (MemoryLimits, error) {
	api, err := n.limits()
	if err != nil {
		return MemoryLimits{}, err
	}
	cu, cns := C.CString(uuid), C.CString(cgroupDir)
	defer C.free(unsafe.Pointer(cu))
	defer C.free(unsafe.Pointer(cns))
	var out C.gs_get_limits_t
	if ret := C.gs_limits_get(*api, cu, cns, &out); ret != 0 { //nolint:gocritic // cgo's generated checks trip dupSubExpr
		return MemoryLimits{}, limitsErr("nvmlDeviceGetMemoryLimits_v1", ret)
	}
	return MemoryLimits{SoftBytes: uint64(out.softLimit), HardBytes: uint64(out.hardLimit), UsedBytes: uint64(out.currentUsed)}, nil
}
