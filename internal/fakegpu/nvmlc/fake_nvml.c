/*
 * A fake libnvidia-ml.so.1 for gpuslice's tests: the subset of NVML that
 * pkg/nvml calls, answered from a state file that internal/fakegpu renders
 * (Node.WriteNVMLState). A test changes the GPUs' state by replacing the
 * file (write and rename); the library parses it again only when it was
 * replaced (another inode), as a driver keeps its state in
 * memory, so the CPU an agent spends in NVML calls stays small. The path comes from the
 * environment variable GPUSLICE_FAKE_NVML_STATE.
 *
 * nvmlInit and nvmlShutdown are reference-counted.
 *
 * State file lines, tab-separated:
 *   driver  <version>
 *   cuda    <1000*major+10*minor>
 *   gpu     <uuid> <minor> <memory bytes> <cc major> <cc minor> <pci bus id> <lost 0|1> <name> [<mig capable 0|1>]
 *   xid     <gpu index> <xid> <sequence> [<gpu instance> <compute instance>]
 *   sample  <gpu index> <util %> <memory used> <temp C> <power mW> <energy mJ> <SM MHz> <time us>
 *   proc    <gpu index> <pid> <memory bytes> <SM util %>
 *   devutil <gpu index> <util %>   (over the last finished sample period)
 *   psample <gpu index> <pid> <time us> <SM util %>   (one per process and
 *           sample period, as the driver keeps them; nvmlDeviceGetProcessUtilization
 *           returns those newer than lastSeen, and falls back to the proc
 *           lines when a state file has none)
 *   mig     <gpu index> <current 0|1> <pending 0|1>   (a MIG-capable GPU's mode)
 *   miginst <gpu index> <uuid> <gpu instance id> <compute instance id>
 *           <GPU instance profile id> <placement start> <placement size>
 *           <memory MiB> <SMs> <copy engines> <decoders> <encoders> <jpeg>
 *           <ofa> <gi slices> <ci slices>   (one MIG device, in index order)
 *   fail    <call: devices|system|watchHealth>
 *   memlimits 1   (the driver has per-cgroup memory limits, r615+)
 *
 * Per-cgroup memory limits set through nvmlDeviceSetMemoryLimits_v1 are
 * kept in <state file>.limits, one "<uuid> <soft> <hard> <cgroup dir>"
 * line each, where the fake node (Node.WriteNVMLState) picks them up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <pthread.h>
#include <fcntl.h>
#include <unistd.h>
#include <poll.h>
#include <sys/inotify.h>

typedef int nvmlReturn_t;
enum {
	NVML_SUCCESS = 0,
	NVML_ERROR_UNINITIALIZED = 1,
	NVML_ERROR_INVALID_ARGUMENT = 2,
	NVML_ERROR_NOT_SUPPORTED = 3,
	NVML_ERROR_NOT_FOUND = 6,
	NVML_ERROR_INSUFFICIENT_SIZE = 7,
	NVML_ERROR_TIMEOUT = 10,
	NVML_ERROR_GPU_IS_LOST = 15,
	NVML_ERROR_UNKNOWN = 999,
};
#define EVENT_XID 8ULL
#define MAX_GPUS 16
#define MAX_XIDS 256
/* Processes and their utilization samples are read into arrays that grow
 * as the state file needs, up to these bounds. */
#define MAX_PROCS 65536
#define MAX_PSAMPLES (1 << 20)
#define MAX_MIG 8

/* A handle names a GPU (mig 0) or its MIG device mig-1. */
typedef struct nvmlDevice_st { int index, mig; } *nvmlDevice_t;
typedef struct nvmlGpuInstance_st { int index, gi; } *nvmlGpuInstance_t;
typedef struct {
	unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount, sharedEncoderCount,
		sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount, computeInstanceSliceCount;
	unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;
typedef struct {
	unsigned int start, size;
} nvmlGpuInstancePlacement_t;
typedef struct {
	nvmlDevice_t device;
	unsigned int id, profileId;
	nvmlGpuInstancePlacement_t placement;
} nvmlGpuInstanceInfo_t;
typedef struct nvmlEventSet_st { unsigned long long registered; long delivered; } *nvmlEventSet_t;
typedef struct {
	unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
	char busIdLegacy[16];
	unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
	char busId[32];
} nvmlPciInfo_t;
typedef struct {
	unsigned int gpu, memory;
} nvmlUtilization_t;
typedef struct {
	unsigned int pid;
	unsigned long long usedGpuMemory;
	unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
	unsigned int pid;
	unsigned long long timeStamp;
	unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;
typedef struct {
	nvmlDevice_t device;
	unsigned long long eventType, eventData;
	unsigned int gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

struct miginst {
	char uuid[96];
	unsigned int gi, ci, profile, start, size, sms, ce, dec, enc, jpg, ofa, giSlices, ciSlices;
	unsigned long long memMB, memUsed;
	unsigned long long busyNs, stampNs; /* GPM: GPU time served in all, as of stampNs */
};
struct gpu {
	char uuid[96], name[96], bus[32];
	unsigned int minor;
	unsigned long long mem;
	int ccMajor, ccMinor, lost, mig;
	int migCurrent, migPending, nmig;
	struct miginst migs[MAX_MIG];
	unsigned int util, temp, power, smClock;
	unsigned long long memUsed, energy, sampleTime;
};
struct proc {
	int gpu;
	unsigned int pid, smUtil;
	unsigned long long mem;
	int mig; /* 0: on the GPU; k: on its MIG device of index k-1 */
};
struct psample {
	int gpu;
	unsigned int pid, smUtil;
	unsigned long long time;
};
struct xid {
	int gpu;
	unsigned long long xid;
	long seq;
	unsigned int gi, ci; /* 0xFFFFFFFF: the GPU, not one instance */
};
struct state {
	char driver[80];
	int cuda, ngpus, nxids;
	struct gpu gpus[MAX_GPUS];
	struct xid xids[MAX_XIDS];
	int nprocs;
	struct proc *procs; /* nprocs of them, shared by every copy of a parse */
	int procsCap;
	int npsamples;
	struct psample *psamples;
	int psamplesCap;
	int devutil[MAX_GPUS]; /* -1: none given */
	int failDevices, failSystem, failWatch, failSample, failProcs;
	int memlimits;
};

static struct nvmlDevice_st handles[MAX_GPUS];
static struct nvmlDevice_st migHandles[MAX_GPUS][MAX_MIG];
static struct nvmlGpuInstance_st giHandles[MAX_GPUS][MAX_MIG];
static int initialized;

static int parse(struct state *s);

/* grow makes room for element n of an array of cap elements of size. */
static int grow(void **arr, int *cap, int n, size_t size) {
	if (n < *cap) return 1;
	int c = *cap ? 2 * *cap : 256;
	void *p = realloc(*arr, (size_t)c * size);
	if (!p) return 0;
	*arr = p;
	*cap = c;
	return 1;
}

/*
 * A parse's arrays are shared by the copies of it that calls made, so a
 * parse replaced is not freed at once: a call may still read it. Replaced
 * arrays are freed once two seconds old; a call takes microseconds.
 */
#define MAX_RETIRED 4096
static struct { void *p; time_t at; } retired[MAX_RETIRED];
static int nretired;

static void retire(void *p) {
	time_t now = time(NULL);
	int kept = 0;
	for (int i = 0; i < nretired; i++) {
		if (now - retired[i].at > 2) {
			free(retired[i].p);
		} else {
			retired[kept++] = retired[i];
		}
	}
	nretired = kept;
	if (!p) return;
	if (nretired == MAX_RETIRED) { /* never expected: keep the newest */
		free(retired[0].p);
		memmove(retired, retired + 1, (MAX_RETIRED - 1) * sizeof retired[0]);
		nretired--;
	}
	retired[nretired].p = p;
	retired[nretired].at = now;
	nretired++;
}

/*
 * The last parse of the state file. The file parsed stays open, so its
 * inode number cannot be given to another file while it is remembered: the
 * same device and inode at the path is then the same file.
 */
static pthread_mutex_t cacheLock = PTHREAD_MUTEX_INITIALIZER;
static struct state cached;
static struct stat cachedStat;
static int cachedFd = -1;
static int cacheValid;

static int load(struct state *s) {
	const char *path = getenv("GPUSLICE_FAKE_NVML_STATE");
	struct stat st;
	if (!path || stat(path, &st)) {
		memset(s, 0, sizeof *s); /* no state file: no GPU */
		for (int i = 0; i < MAX_GPUS; i++) s->devutil[i] = -1;
		return 0;
	}
	pthread_mutex_lock(&cacheLock);
	if (cachedFd < 0 || st.st_ino != cachedStat.st_ino || st.st_dev != cachedStat.st_dev) {
		if (cachedFd >= 0) close(cachedFd);
		cachedFd = open(path, O_RDONLY | O_CLOEXEC);
		if (cachedFd >= 0 && fstat(cachedFd, &cachedStat)) {
			close(cachedFd);
			cachedFd = -1;
		}
		retire(cached.procs);
		retire(cached.psamples);
		cacheValid = parse(&cached);
	}
	int ok = cacheValid;
	memcpy(s, &cached, sizeof *s);
	if (cachedFd < 0) cacheValid = 0;
	pthread_mutex_unlock(&cacheLock);
	return ok;
}

static int parse(struct state *s) {
	memset(s, 0, sizeof *s);
	for (int i = 0; i < MAX_GPUS; i++) s->devutil[i] = -1;
	const char *path = getenv("GPUSLICE_FAKE_NVML_STATE");
	if (!path) return 0;
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		char *save = NULL, *kind = strtok_r(line, "\t", &save);
		if (!kind) continue;
		if (!strcmp(kind, "driver")) {
			char *v = strtok_r(NULL, "\t", &save);
			if (v) snprintf(s->driver, sizeof s->driver, "%s", v);
		} else if (!strcmp(kind, "cuda")) {
			char *v = strtok_r(NULL, "\t", &save);
			if (v) s->cuda = atoi(v);
		} else if (!strcmp(kind, "gpu") && s->ngpus < MAX_GPUS) {
			struct gpu *g = &s->gpus[s->ngpus];
			char *fld[8];
			int i;
			for (i = 0; i < 8 && (fld[i] = strtok_r(NULL, "\t", &save)); i++) {}
			if (i < 8) continue;
			snprintf(g->uuid, sizeof g->uuid, "%s", fld[0]);
			g->minor = (unsigned)atoi(fld[1]);
			g->mem = strtoull(fld[2], NULL, 10);
			g->ccMajor = atoi(fld[3]);
			g->ccMinor = atoi(fld[4]);
			snprintf(g->bus, sizeof g->bus, "%s", fld[5]);
			g->lost = atoi(fld[6]);
			snprintf(g->name, sizeof g->name, "%s", fld[7]);
			char *mig = strtok_r(NULL, "\t", &save);
			g->mig = mig ? atoi(mig) : 0;
			s->ngpus++;
		} else if (!strcmp(kind, "xid") && s->nxids < MAX_XIDS) {
			char *g = strtok_r(NULL, "\t", &save), *x = strtok_r(NULL, "\t", &save), *q = strtok_r(NULL, "\t", &save);
			if (!g || !x || !q) continue;
			char *gi = strtok_r(NULL, "\t", &save), *ci = strtok_r(NULL, "\t", &save);
			s->xids[s->nxids++] = (struct xid){atoi(g), strtoull(x, NULL, 10), atol(q),
				gi && ci ? (unsigned)atoi(gi) : 0xFFFFFFFFu, gi && ci ? (unsigned)atoi(ci) : 0xFFFFFFFFu};
		} else if (!strcmp(kind, "sample")) {
			char *fld[8];
			int i;
			for (i = 0; i < 8 && (fld[i] = strtok_r(NULL, "\t", &save)); i++) {}
			int g = i == 8 ? atoi(fld[0]) : -1;
			if (g < 0 || g >= s->ngpus) continue;
			s->gpus[g].util = (unsigned)atoi(fld[1]);
			s->gpus[g].memUsed = strtoull(fld[2], NULL, 10);
			s->gpus[g].temp = (unsigned)atoi(fld[3]);
			s->gpus[g].power = (unsigned)strtoul(fld[4], NULL, 10);
			s->gpus[g].energy = strtoull(fld[5], NULL, 10);
			s->gpus[g].smClock = (unsigned)atoi(fld[6]);
			s->gpus[g].sampleTime = strtoull(fld[7], NULL, 10);
		} else if (!strcmp(kind, "proc") && s->nprocs < MAX_PROCS && grow((void **)&s->procs, &s->procsCap, s->nprocs, sizeof *s->procs)) {
			char *fld[4];
			int i;
			for (i = 0; i < 4 && (fld[i] = strtok_r(NULL, "\t", &save)); i++) {}
			if (i < 4) continue;
			char *mig = strtok_r(NULL, "\t", &save);
			s->procs[s->nprocs++] = (struct proc){atoi(fld[0]), (unsigned)atoi(fld[1]), (unsigned)atoi(fld[3]), strtoull(fld[2], NULL, 10), mig ? atoi(mig) : 0};
		} else if (!strcmp(kind, "psample") && s->npsamples < MAX_PSAMPLES && grow((void **)&s->psamples, &s->psamplesCap, s->npsamples, sizeof *s->psamples)) {
			char *fld[4];
			int i;
			for (i = 0; i < 4 && (fld[i] = strtok_r(NULL, "\t", &save)); i++) {}
			if (i < 4) continue;
			s->psamples[s->npsamples++] = (struct psample){atoi(fld[0]), (unsigned)atoi(fld[1]), (unsigned)atoi(fld[3]), strtoull(fld[2], NULL, 10)};
		} else if (!strcmp(kind, "devutil")) {
			char *g = strtok_r(NULL, "\t", &save), *u = strtok_r(NULL, "\t", &save);
			if (!g || !u || atoi(g) < 0 || atoi(g) >= MAX_GPUS) continue;
			s->devutil[atoi(g)] = atoi(u);
		} else if (!strcmp(kind, "mig")) {
			char *g = strtok_r(NULL, "\t", &save), *c = strtok_r(NULL, "\t", &save), *p = strtok_r(NULL, "\t", &save);
			if (!g || !c || !p || atoi(g) < 0 || atoi(g) >= s->ngpus) continue;
			s->gpus[atoi(g)].migCurrent = atoi(c);
			s->gpus[atoi(g)].migPending = atoi(p);
		} else if (!strcmp(kind, "miginst")) {
			char *fld[16];
			int i;
			for (i = 0; i < 16 && (fld[i] = strtok_r(NULL, "\t", &save)); i++) {}
			int g = i == 16 ? atoi(fld[0]) : -1;
			if (g < 0 || g >= s->ngpus || s->gpus[g].nmig >= MAX_MIG) continue;
			struct miginst *m = &s->gpus[g].migs[s->gpus[g].nmig++];
			snprintf(m->uuid, sizeof m->uuid, "%s", fld[1]);
			unsigned int *u[] = {&m->gi, &m->ci, &m->profile, &m->start, &m->size};
			for (int k = 0; k < 5; k++) *u[k] = (unsigned)atoi(fld[2 + k]);
			m->memMB = strtoull(fld[7], NULL, 10);
			unsigned int *v[] = {&m->sms, &m->ce, &m->dec, &m->enc, &m->jpg, &m->ofa, &m->giSlices, &m->ciSlices};
			for (int k = 0; k < 8; k++) *v[k] = (unsigned)atoi(fld[8 + k]);
		} else if (!strcmp(kind, "migsample")) {
			char *g = strtok_r(NULL, "\t", &save), *k = strtok_r(NULL, "\t", &save), *u = strtok_r(NULL, "\t", &save);
			char *busy = strtok_r(NULL, "\t", &save), *stamp = strtok_r(NULL, "\t", &save);
			if (!g || !k || !u || atoi(g) < 0 || atoi(g) >= s->ngpus || atoi(k) < 0 || atoi(k) >= s->gpus[atoi(g)].nmig) continue;
			struct miginst *m = &s->gpus[atoi(g)].migs[atoi(k)];
			m->memUsed = strtoull(u, NULL, 10);
			m->busyNs = busy ? strtoull(busy, NULL, 10) : 0;
			m->stampNs = stamp ? strtoull(stamp, NULL, 10) : 0;
		} else if (!strcmp(kind, "memlimits")) {
			char *v = strtok_r(NULL, "\t", &save);
			if (v) s->memlimits = atoi(v);
		} else if (!strcmp(kind, "fail")) {
			char *c = strtok_r(NULL, "\t", &save);
			if (!c) continue;
			if (!strcmp(c, "devices")) s->failDevices = 1;
			if (!strcmp(c, "system")) s->failSystem = 1;
			if (!strcmp(c, "watchHealth")) s->failWatch = 1;
			if (!strcmp(c, "sample")) s->failSample = 1;
			if (!strcmp(c, "processes")) s->failProcs = 1;
		}
	}
	fclose(f);
	return 1;
}

static nvmlReturn_t copy(char *dst, unsigned int len, const char *src) {
	if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
	if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
	memcpy(dst, src, strlen(src) + 1);
	return NVML_SUCCESS;
}

/* gpuOf resolves a handle against the current state. */
static nvmlReturn_t gpuOf(nvmlDevice_t d, struct state *s, struct gpu **g) {
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!d || d < handles || d >= handles + MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
	load(s);
	if (d->index >= s->ngpus) return NVML_ERROR_NOT_FOUND;
	*g = &s->gpus[d->index];
	return (*g)->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

/* Init and shutdown are reference-counted, as the real library's are: a
 * process with two users of NVML (NVIDIA's device plugin has several) keeps
 * it until the last one shuts down. */
nvmlReturn_t nvmlInit_v2(void) {
	struct state s;
	if (!load(&s)) return NVML_ERROR_UNKNOWN;
	for (int i = 0; i < MAX_GPUS; i++) {
		handles[i].index = i;
		for (int m = 0; m < MAX_MIG; m++) {
			migHandles[i][m] = (struct nvmlDevice_st){i, m + 1};
			giHandles[i][m] = (struct nvmlGpuInstance_st){i, -1};
		}
	}
	__atomic_add_fetch(&initialized, 1, __ATOMIC_SEQ_CST);
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
nvmlReturn_t nvmlShutdown(void) {
	int n = __atomic_load_n(&initialized, __ATOMIC_SEQ_CST);
	while (n > 0 && !__atomic_compare_exchange_n(&initialized, &n, n - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
	return n > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

const char *nvmlErrorString(nvmlReturn_t r) {
	switch (r) {
	case NVML_SUCCESS: return "Success";
	case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
	case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
	case NVML_ERROR_NOT_FOUND: return "Not Found";
	case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
	case NVML_ERROR_TIMEOUT: return "Timeout";
	case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
	}
	return "Unknown Error";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	load(&s);
	if (s.failSystem) return NVML_ERROR_UNKNOWN;
	return copy(version, length, s.driver);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!v) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	if (s.failSystem) return NVML_ERROR_UNKNOWN;
	*v = s.cuda;
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!count) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	if (s.failDevices) return NVML_ERROR_UNKNOWN;
	*count = (unsigned)s.ngpus;
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!device) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	if (index >= (unsigned)s.ngpus) return NVML_ERROR_INVALID_ARGUMENT;
	if (s.gpus[index].lost) return NVML_ERROR_GPU_IS_LOST;
	*device = &handles[index];
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
	return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* migOf resolves a MIG device handle against the current state: a MIG
 * device that is gone (the layout changed) is not found. */
static nvmlReturn_t migOf(nvmlDevice_t d, struct state *s, struct gpu **g, struct miginst **m) {
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!d || d < &migHandles[0][0] || d >= &migHandles[0][0] + MAX_GPUS * MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
	load(s);
	if (d->index >= s->ngpus) return NVML_ERROR_NOT_FOUND;
	*g = &s->gpus[d->index];
	if ((*g)->lost) return NVML_ERROR_GPU_IS_LOST;
	if (!(*g)->migCurrent || d->mig - 1 >= (*g)->nmig) return NVML_ERROR_NOT_FOUND;
	*m = &(*g)->migs[d->mig - 1];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	if (d && d->mig) {
		nvmlReturn_t r = migOf(d, &s, &g, &m);
		return r ? r : copy(uuid, length, m->uuid);
	}
	nvmlReturn_t r = gpuOf(d, &s, &g);
	return r ? r : copy(uuid, length, g->uuid);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	return r ? r : copy(name, length, g->name);
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t d, unsigned int *minor) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!minor) return NVML_ERROR_INVALID_ARGUMENT;
	*minor = g->minor;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
	struct state s;
	struct gpu *g;
	if (d && d->mig) {
		struct miginst *in;
		nvmlReturn_t r = migOf(d, &s, &g, &in);
		if (r) return r;
		if (!m) return NVML_ERROR_INVALID_ARGUMENT;
		if (s.failSample) return NVML_ERROR_UNKNOWN;
		m->total = in->memMB << 20;
		m->used = in->memUsed;
		m->free = m->total > m->used ? m->total - m->used : 0;
		return NVML_SUCCESS;
	}
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!m) return NVML_ERROR_INVALID_ARGUMENT;
	m->total = g->mem;
	m->used = g->memUsed;
	m->free = g->mem - g->memUsed;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
	*major = g->ccMajor;
	*minor = g->ccMinor;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *p) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!p) return NVML_ERROR_INVALID_ARGUMENT;
	memset(p, 0, sizeof *p);
	snprintf(p->busId, sizeof p->busId, "%s", g->bus);
	snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%.15s", g->bus + (strlen(g->bus) > 12 ? 4 : 0));
	sscanf(g->bus, "%x:%x:%x", &p->domain, &p->bus, &p->device);
	p->pciDeviceId = 0x20b010de;
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *p) { return nvmlDeviceGetPciInfo_v3(d, p); }
nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *p) { return nvmlDeviceGetPciInfo_v3(d, p); }

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t d, unsigned long long *types) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!types) return NVML_ERROR_INVALID_ARGUMENT;
	*types = EVENT_XID | 1ULL | 2ULL;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!set) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	if (s.failWatch) return NVML_ERROR_UNKNOWN;
	*set = calloc(1, sizeof **set);
	if (!*set) return NVML_ERROR_UNKNOWN;
	/* Only XIDs reported after the set exists are delivered, as with NVML. */
	for (int i = 0; i < s.nxids; i++)
		if (s.xids[i].seq > (*set)->delivered) (*set)->delivered = s.xids[i].seq;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!set) return NVML_ERROR_INVALID_ARGUMENT;
	if (types & EVENT_XID) set->registered |= 1ULL << d->index;
	return NVML_SUCCESS;
}

/*
 * nextXID delivers the set's next XID from the state, if there is one.
 */
static int nextXID(nvmlEventSet_t set, nvmlEventData_t *data) {
	struct state s;
	load(&s);
	for (int i = 0; i < s.nxids; i++) {
		struct xid *x = &s.xids[i];
		if (x->seq <= set->delivered) continue;
		set->delivered = x->seq;
		if (x->gpu < 0 || x->gpu >= MAX_GPUS || !(set->registered & (1ULL << x->gpu))) continue;
		memset(data, 0, sizeof *data);
		data->device = &handles[x->gpu];
		data->eventType = EVENT_XID;
		data->eventData = x->xid;
		data->gpuInstanceId = x->gi;
		data->computeInstanceId = x->ci;
		return 1;
	}
	return 0;
}

/*
 * nvmlEventSetWait_v2 blocks, as the driver's does, until an XID or the
 * timeout: it sleeps on inotify for the state file's directory (the state
 * is replaced by rename) instead of polling, so a waiting agent spends no
 * CPU here. Without inotify it polls every 5 ms.
 */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
	const char *path = getenv("GPUSLICE_FAKE_NVML_STATE");
	int fd = path ? inotify_init1(IN_CLOEXEC | IN_NONBLOCK) : -1;
	if (fd >= 0) {
		char dir[4096];
		snprintf(dir, sizeof dir, "%s", path);
		char *slash = strrchr(dir, '/');
		if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
		if (inotify_add_watch(fd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE) < 0) {
			close(fd);
			fd = -1;
		}
	}
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	nvmlReturn_t ret = NVML_ERROR_TIMEOUT;
	for (;;) {
		if (nextXID(set, data)) {
			ret = NVML_SUCCESS;
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
		long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited >= (long)timeoutms) break;
		if (fd >= 0) {
			struct pollfd p = {fd, POLLIN, 0};
			if (poll(&p, 1, (int)(timeoutms - waited)) > 0) {
				char buf[4096];
				while (read(fd, buf, sizeof buf) > 0) {}
			}
		} else {
			struct timespec tick = {0, 5 * 1000 * 1000};
			nanosleep(&tick, NULL);
		}
	}
	if (fd >= 0) close(fd);
	return ret;
}
nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
	return nvmlEventSetWait_v2(set, data, timeoutms);
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
	free(set);
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	for (int i = 0; i < s.ngpus; i++) {
		if (strcmp(s.gpus[i].uuid, uuid)) continue;
		if (s.gpus[i].lost) return NVML_ERROR_GPU_IS_LOST;
		*device = &handles[i];
		return NVML_SUCCESS;
	}
	/* A MIG device's UUID names its handle, while it is in force. */
	for (int i = 0; i < s.ngpus; i++) {
		for (int k = 0; s.gpus[i].migCurrent && k < s.gpus[i].nmig; k++) {
			if (strcmp(s.gpus[i].migs[k].uuid, uuid)) continue;
			if (s.gpus[i].lost) return NVML_ERROR_GPU_IS_LOST;
			*device = &migHandles[i][k];
			return NVML_SUCCESS;
		}
	}
	return NVML_ERROR_NOT_FOUND;
}

/* sampled resolves a handle for the sampling calls, which can be made to fail. */
static nvmlReturn_t sampled(nvmlDevice_t d, struct state *s, struct gpu **g) {
	nvmlReturn_t r = gpuOf(d, s, g);
	if (r) return r;
	return s->failSample ? NVML_ERROR_UNKNOWN : NVML_SUCCESS;
}

/* notOnMIG answers the calls the driver does not support on a MIG device:
 * utilization (of the device or its processes), which it does not sample
 * per instance. */
static nvmlReturn_t notOnMIG(nvmlDevice_t d, struct state *s) {
	struct gpu *g;
	struct miginst *m;
	nvmlReturn_t r = migOf(d, s, &g, &m);
	return r ? r : NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
	struct state s;
	struct gpu *g;
	if (d && d->mig) return notOnMIG(d, &s);
	nvmlReturn_t r = sampled(d, &s, &g);
	if (r) return r;
	if (!u) return NVML_ERROR_INVALID_ARGUMENT;
	u->gpu = s.devutil[d->index] >= 0 ? (unsigned)s.devutil[d->index] : g->util;
	u->memory = u->gpu / 2;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = sampled(d, &s, &g);
	if (r) return r;
	if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
	*temp = g->temp;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = sampled(d, &s, &g);
	if (r) return r;
	if (!mw) return NVML_ERROR_INVALID_ARGUMENT;
	*mw = g->power;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *mj) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = sampled(d, &s, &g);
	if (r) return r;
	if (!mj) return NVML_ERROR_INVALID_ARGUMENT;
	*mj = g->energy;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *mhz) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = sampled(d, &s, &g);
	if (r) return r;
	if (!mhz || type != 1) return NVML_ERROR_INVALID_ARGUMENT; /* 1: NVML_CLOCK_SM */
	*mhz = g->smClock;
	return NVML_SUCCESS;
}

/* Processes on a GPU handle are those on the GPU itself; on a MIG device
 * handle, those on that instance, with its GPU and compute instance IDs. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
	struct state s;
	struct gpu *g;
	struct miginst *m = NULL;
	nvmlReturn_t r = d && d->mig ? migOf(d, &s, &g, &m) : gpuOf(d, &s, &g);
	if (r) return r;
	if (!count) return NVML_ERROR_INVALID_ARGUMENT;
	if (s.failProcs) return NVML_ERROR_UNKNOWN;
	int mig = d->mig;
	unsigned int n = 0;
	for (int i = 0; i < s.nprocs; i++)
		if (s.procs[i].gpu == d->index && s.procs[i].mig == mig) n++;
	if (n > *count || (n > 0 && !infos)) {
		*count = n;
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	*count = 0;
	for (int i = 0; i < s.nprocs; i++) {
		if (s.procs[i].gpu != d->index || s.procs[i].mig != mig) continue;
		infos[*count] = (nvmlProcessInfo_t){s.procs[i].pid, s.procs[i].mem, m ? m->gi : 0xFFFFFFFF, m ? m->ci : 0xFFFFFFFF};
		(*count)++;
	}
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
	return nvmlDeviceGetComputeRunningProcesses_v3(d, count, infos);
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *out, unsigned int *count, unsigned long long lastSeen) {
	struct state s;
	struct gpu *g;
	if (d && d->mig) return notOnMIG(d, &s);
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!count) return NVML_ERROR_INVALID_ARGUMENT;
	if (s.failProcs) return NVML_ERROR_UNKNOWN;
	if (s.npsamples > 0) {
		unsigned int n = 0;
		for (int i = 0; i < s.npsamples; i++)
			if (s.psamples[i].gpu == d->index && s.psamples[i].time > lastSeen) n++;
		if (n == 0) return NVML_ERROR_NOT_FOUND;
		if (!out || n > *count) {
			*count = n;
			return NVML_ERROR_INSUFFICIENT_SIZE;
		}
		*count = 0;
		for (int i = 0; i < s.npsamples; i++) {
			struct psample *p = &s.psamples[i];
			if (p->gpu != d->index || p->time <= lastSeen) continue;
			out[*count] = (nvmlProcessUtilizationSample_t){p->pid, p->time, p->smUtil, 0, 0, 0};
			(*count)++;
		}
		return NVML_SUCCESS;
	}
	if (g->sampleTime <= lastSeen) return NVML_ERROR_NOT_FOUND;
	unsigned int n = 0;
	for (int i = 0; i < s.nprocs; i++)
		if (s.procs[i].gpu == d->index && !s.procs[i].mig) n++;
	if (n == 0) return NVML_ERROR_NOT_FOUND;
	if (!out || n > *count) {
		*count = n;
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	*count = 0;
	for (int i = 0; i < s.nprocs; i++) {
		if (s.procs[i].gpu != d->index || s.procs[i].mig) continue;
		out[*count] = (nvmlProcessUtilizationSample_t){s.procs[i].pid, g->sampleTime, s.procs[i].smUtil, 0, 0, 0};
		(*count)++;
	}
	return NVML_SUCCESS;
}

/* MIG: a capable GPU reports its mode; others are not supported. */
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
	if (!g->mig) return NVML_ERROR_NOT_SUPPORTED;
	*current = (unsigned)g->migCurrent;
	*pending = (unsigned)g->migPending;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t d, unsigned int *count) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!count) return NVML_ERROR_INVALID_ARGUMENT;
	if (!g->mig) return NVML_ERROR_NOT_SUPPORTED;
	*count = 7;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!mig || index >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
	if (!g->mig) return NVML_ERROR_NOT_SUPPORTED;
	if (!g->migCurrent || (int)index >= g->nmig) return NVML_ERROR_NOT_FOUND;
	*mig = &migHandles[d->index][index];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t d, unsigned int *isMig) {
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!d || !isMig) return NVML_ERROR_INVALID_ARGUMENT;
	*isMig = d->mig ? 1 : 0;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t d, unsigned int *id) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	nvmlReturn_t r = migOf(d, &s, &g, &m);
	if (r) return r;
	if (!id) return NVML_ERROR_INVALID_ARGUMENT;
	*id = m->gi;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t d, unsigned int *id) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	nvmlReturn_t r = migOf(d, &s, &g, &m);
	if (r) return r;
	if (!id) return NVML_ERROR_INVALID_ARGUMENT;
	*id = m->ci;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t d, nvmlDeviceAttributes_t *a) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	nvmlReturn_t r = migOf(d, &s, &g, &m);
	if (r) return r;
	if (!a) return NVML_ERROR_INVALID_ARGUMENT;
	*a = (nvmlDeviceAttributes_t){m->sms, m->ce, m->dec, m->enc, m->jpg, m->ofa, m->giSlices, m->ciSlices, m->memMB};
	return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetAttributes(nvmlDevice_t d, nvmlDeviceAttributes_t *a) { return nvmlDeviceGetAttributes_v2(d, a); }

nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t d, unsigned int id, nvmlGpuInstance_t *gi) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	if (!gi) return NVML_ERROR_INVALID_ARGUMENT;
	if (!g->mig) return NVML_ERROR_NOT_SUPPORTED;
	for (int i = 0; g->migCurrent && i < g->nmig; i++) {
		if (g->migs[i].gi == id) {
			giHandles[d->index][i].gi = (int)id;
			*gi = &giHandles[d->index][i];
			return NVML_SUCCESS;
		}
	}
	return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gi, nvmlGpuInstanceInfo_t *info) {
	struct state s;
	if (!initialized) return NVML_ERROR_UNINITIALIZED;
	if (!gi || !info || gi < &giHandles[0][0] || gi >= &giHandles[0][0] + MAX_GPUS * MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
	load(&s);
	if (gi->index >= s.ngpus) return NVML_ERROR_NOT_FOUND;
	struct gpu *g = &s.gpus[gi->index];
	for (int i = 0; g->migCurrent && i < g->nmig; i++) {
		if ((int)g->migs[i].gi == gi->gi) {
			*info = (nvmlGpuInstanceInfo_t){&handles[gi->index], g->migs[i].gi, g->migs[i].profile, {g->migs[i].start, g->migs[i].size}};
			return NVML_SUCCESS;
		}
	}
	return NVML_ERROR_NOT_FOUND;
}

/* Per-cgroup memory limits (r615+). */
#define MAX_LIMITS 256
#define NO_LIMIT (~0ULL)
typedef struct {
	const char *nameSpace;
	unsigned long long softLimit, hardLimit;
} nvmlSetMemoryLimits_v1_t;
typedef struct {
	const char *nameSpace;
	unsigned long long softLimit, hardLimit, currentUsed;
} nvmlGetMemoryLimits_v1_t;
struct limit {
	char uuid[96], dir[1024];
	unsigned long long soft, hard;
};

static void limitsPath(char *buf, size_t len) {
	const char *state = getenv("GPUSLICE_FAKE_NVML_STATE");
	snprintf(buf, len, "%s.limits", state ? state : "");
}

static int loadLimits(struct limit *ls) {
	char path[1100], line[1300];
	limitsPath(path, sizeof path);
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	int n = 0;
	while (n < MAX_LIMITS && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		char *save = NULL, *u = strtok_r(line, "\t", &save), *so = strtok_r(NULL, "\t", &save),
		     *h = strtok_r(NULL, "\t", &save), *d = strtok_r(NULL, "\t", &save);
		if (!u || !so || !h || !d) continue;
		snprintf(ls[n].uuid, sizeof ls[n].uuid, "%s", u);
		snprintf(ls[n].dir, sizeof ls[n].dir, "%s", d);
		ls[n].soft = strtoull(so, NULL, 10);
		ls[n].hard = strtoull(h, NULL, 10);
		n++;
	}
	fclose(f);
	return n;
}

static nvmlReturn_t saveLimits(struct limit *ls, int n) {
	char path[1100], tmp[1200];
	limitsPath(path, sizeof path);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) return NVML_ERROR_UNKNOWN;
	for (int i = 0; i < n; i++)
		fprintf(f, "%s\t%llu\t%llu\t%s\n", ls[i].uuid, ls[i].soft, ls[i].hard, ls[i].dir);
	if (fclose(f) || rename(tmp, path)) return NVML_ERROR_UNKNOWN;
	return NVML_SUCCESS;
}

/* limitTarget checks a limits call: the driver must have the feature and
 * the cgroup must exist. */
static nvmlReturn_t limitTarget(nvmlDevice_t d, const char *ns, struct state *s, struct gpu **g) {
	nvmlReturn_t r = gpuOf(d, s, g);
	if (r) return r;
	if (!s->memlimits) return NVML_ERROR_NOT_SUPPORTED;
	if (!ns || strlen(ns) >= 1024 || strchr(ns, '\t') || strchr(ns, '\n')) return NVML_ERROR_INVALID_ARGUMENT;
	char procs[1100];
	struct stat st;
	snprintf(procs, sizeof procs, "%s/cgroup.procs", ns);
	if (stat(procs, &st)) return NVML_ERROR_NOT_FOUND;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceSetMemoryLimits_v1(nvmlDevice_t d, nvmlSetMemoryLimits_v1_t *l) {
	struct state s;
	struct gpu *g;
	if (!l) return NVML_ERROR_INVALID_ARGUMENT;
	nvmlReturn_t r = limitTarget(d, l->nameSpace, &s, &g);
	if (r) return r;
	if (l->softLimit > l->hardLimit) return NVML_ERROR_INVALID_ARGUMENT;
	static struct limit ls[MAX_LIMITS];
	int n = loadLimits(ls), at = n;
	for (int i = 0; i < n; i++)
		if (!strcmp(ls[i].uuid, g->uuid) && !strcmp(ls[i].dir, l->nameSpace)) at = i;
	if (l->softLimit == 0 && l->hardLimit == NO_LIMIT) {
		if (at < n) ls[at] = ls[--n]; /* cleared */
		return saveLimits(ls, n);
	}
	if (at == n) {
		if (n == MAX_LIMITS) return NVML_ERROR_UNKNOWN;
		n++;
	}
	snprintf(ls[at].uuid, sizeof ls[at].uuid, "%s", g->uuid);
	snprintf(ls[at].dir, sizeof ls[at].dir, "%s", l->nameSpace);
	ls[at].soft = l->softLimit;
	ls[at].hard = l->hardLimit;
	return saveLimits(ls, n);
}

/* inCgroup reports whether pid's cgroup v2 path is the one dir ends with. */
static int inCgroup(unsigned int pid, const char *dir) {
	char path[64], line[1100];
	snprintf(path, sizeof path, "/proc/%u/cgroup", pid);
	FILE *f = fopen(path, "r");
	if (!f) return 0;
	int in = 0;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (strncmp(line, "0::", 3)) continue;
		const char *p = line + 3;
		size_t lp = strlen(p), ld = strlen(dir);
		in = lp > 1 && ld >= lp && !strcmp(dir + ld - lp, p);
	}
	fclose(f);
	return in;
}

nvmlReturn_t nvmlDeviceGetMemoryLimits_v1(nvmlDevice_t d, nvmlGetMemoryLimits_v1_t *l) {
	struct state s;
	struct gpu *g;
	if (!l) return NVML_ERROR_INVALID_ARGUMENT;
	nvmlReturn_t r = limitTarget(d, l->nameSpace, &s, &g);
	if (r) return r;
	static struct limit ls[MAX_LIMITS];
	int n = loadLimits(ls);
	l->softLimit = 0;
	l->hardLimit = NO_LIMIT;
	for (int i = 0; i < n; i++) {
		if (strcmp(ls[i].uuid, g->uuid) || strcmp(ls[i].dir, l->nameSpace)) continue;
		l->softLimit = ls[i].soft;
		l->hardLimit = ls[i].hard;
	}
	l->currentUsed = 0;
	for (int i = 0; i < s.nprocs; i++)
		if (s.procs[i].gpu == d->index && inCgroup(s.procs[i].pid, l->nameSpace)) l->currentUsed += s.procs[i].mem;
	return NVML_SUCCESS;
}

/*
 * GPU performance monitoring (Hopper and later): a sample holds a MIG
 * instance's counter of GPU time served and when it was read; SM
 * utilization is the counter's growth over the time between two samples.
 * The fake measures MIG instances only (the agent reads a whole GPU's
 * utilization otherwise).
 */
struct nvmlGpmSample_st { int valid; unsigned long long busyNs, stampNs; };
typedef struct { struct nvmlGpmSample_st *handle; } nvmlGpmSample_t;
typedef struct { char *shortName, *longName, *unit; } nvmlGpmMetricMetricInfo_t;
typedef struct {
	unsigned int metricId;
	nvmlReturn_t nvmlReturn;
	double value;
	nvmlGpmMetricMetricInfo_t metricInfo;
} nvmlGpmMetric_t;
#define GPM_METRIC_MAX 333
#define GPM_METRIC_SM_UTIL 2
typedef struct {
	unsigned int version, numMetrics;
	nvmlGpmSample_t sample1, sample2;
	nvmlGpmMetric_t metrics[GPM_METRIC_MAX];
} nvmlGpmMetricsGet_t;
typedef struct { unsigned int version, isSupportedDevice; } nvmlGpmSupport_t;

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t d, nvmlGpmSupport_t *sup) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	nvmlReturn_t r = d && d->mig ? migOf(d, &s, &g, &m) : gpuOf(d, &s, &g);
	if (r) return r;
	if (!sup) return NVML_ERROR_INVALID_ARGUMENT;
	sup->isSupportedDevice = g->ccMajor >= 9;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
	if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
	sample->handle = calloc(1, sizeof *sample->handle);
	return sample->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
	if (!sample.handle) return NVML_ERROR_INVALID_ARGUMENT;
	free(sample.handle);
	return NVML_SUCCESS;
}

static nvmlReturn_t gpmFill(struct gpu *g, struct miginst *m, nvmlGpmSample_t sample) {
	if (!sample.handle) return NVML_ERROR_INVALID_ARGUMENT;
	if (g->ccMajor < 9) return NVML_ERROR_NOT_SUPPORTED;
	*sample.handle = (struct nvmlGpmSample_st){1, m->busyNs, m->stampNs};
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t d, nvmlGpmSample_t sample) {
	struct state s;
	struct gpu *g;
	struct miginst *m;
	if (!d || !d->mig) return NVML_ERROR_NOT_SUPPORTED;
	nvmlReturn_t r = migOf(d, &s, &g, &m);
	return r ? r : gpmFill(g, m, sample);
}

nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t d, unsigned int gi, nvmlGpmSample_t sample) {
	struct state s;
	struct gpu *g;
	nvmlReturn_t r = gpuOf(d, &s, &g);
	if (r) return r;
	for (int k = 0; g->migCurrent && k < g->nmig; k++)
		if (g->migs[k].gi == gi) return gpmFill(g, &g->migs[k], sample);
	return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *get) {
	if (!get || get->version != 1 || get->numMetrics > GPM_METRIC_MAX) return NVML_ERROR_INVALID_ARGUMENT;
	struct nvmlGpmSample_st *a = get->sample1.handle, *b = get->sample2.handle;
	if (!a || !b || !a->valid || !b->valid) return NVML_ERROR_INVALID_ARGUMENT;
	for (unsigned int i = 0; i < get->numMetrics; i++) {
		nvmlGpmMetric_t *m = &get->metrics[i];
		m->metricInfo = (nvmlGpmMetricMetricInfo_t){NULL, NULL, NULL};
		if (m->metricId != GPM_METRIC_SM_UTIL) {
			m->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
			continue;
		}
		if (b->stampNs <= a->stampNs) {
			m->nvmlReturn = NVML_ERROR_INVALID_ARGUMENT;
			continue;
		}
		double busy = b->busyNs >= a->busyNs ? (double)(b->busyNs - a->busyNs) : 0;
		double v = 100.0 * busy / (double)(b->stampNs - a->stampNs);
		m->value = v > 100 ? 100 : v;
		m->nvmlReturn = NVML_SUCCESS;
	}
	return NVML_SUCCESS;
}
