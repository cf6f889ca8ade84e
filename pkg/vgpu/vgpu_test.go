package vgpu

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const gib = 1 << 30

// node4 is four 40 GiB GPUs cut in 4 slices each.
func node4(t testing.TB) *Layout {
	t.Helper()
	var gpus []GPU
	for i := range 4 {
		gpus = append(gpus, GPU{UUID: fmt.Sprintf("GPU-%d", i), Index: i, Model: "A100", MemoryBytes: 40 * gib})
	}
	l, err := NewLayout(gpus, Config{Default: Rule{SlicesPerGPU: 4}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ids(gpu int, slices ...int) []string {
	var out []string
	for _, s := range slices {
		out = append(out, SliceID{UUID: fmt.Sprintf("GPU-%d", gpu), Index: s}.String())
	}
	return out
}

func cat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestParseSliceID(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in      string
		want    SliceID
		wantErr bool
	}{
		"canonical":          {in: "GPU-8c7d2f3a-1111-2222-3333-444455556666::3", want: SliceID{UUID: "GPU-8c7d2f3a-1111-2222-3333-444455556666", Index: 3}},
		"mig uuid":           {in: "MIG-abc::0", want: SliceID{UUID: "MIG-abc", Index: 0}},
		"no separator":       {in: "GPU-1", wantErr: true},
		"empty uuid":         {in: "::1", wantErr: true},
		"empty index":        {in: "GPU-1::", wantErr: true},
		"negative index":     {in: "GPU-1::-1", wantErr: true},
		"leading zero":       {in: "GPU-1::01", wantErr: true},
		"plus sign":          {in: "GPU-1::+1", wantErr: true},
		"separator in uuid":  {in: "GPU::1::2", wantErr: true},
		"space in uuid":      {in: "GPU 1::2", wantErr: true},
		"comma in uuid":      {in: "GPU-1,GPU-2::2", wantErr: true},
		"non-ascii in uuid":  {in: "GPU-é::2", wantErr: true},
		"index overflow":     {in: "GPU-1::99999999999999999999", wantErr: true},
		"single colon":       {in: "GPU-1:2", wantErr: true},
		"trailing separator": {in: "GPU-1::2::", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseSliceID(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidID) {
					t.Fatalf("ParseSliceID(%q) = %v, %v; want ErrInvalidID", tc.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func TestNewLayout(t *testing.T) {
	t.Parallel()
	a100 := GPU{UUID: "GPU-a", Index: 0, Model: "NVIDIA A100-SXM4-40GB", MemoryBytes: 40 * gib}
	h100 := GPU{UUID: "GPU-h", Index: 1, Model: "NVIDIA H100 80GB HBM3", MemoryBytes: 80 * gib}
	tests := map[string]struct {
		gpus    []GPU
		cfg     Config
		want    []GPUSlices
		wantErr string
	}{
		"slices per gpu": {
			gpus: []GPU{a100},
			cfg:  Config{Default: Rule{SlicesPerGPU: 8}},
			want: []GPUSlices{{GPU: a100, Slices: 8, SliceMemoryBytes: 5 * gib}},
		},
		"slice memory leaves remainder unoffered": {
			gpus: []GPU{a100},
			cfg:  Config{Default: Rule{SliceMemoryBytes: 12 * gib}},
			want: []GPUSlices{{GPU: a100, Slices: 3, SliceMemoryBytes: 12 * gib}},
		},
		"mixed models use per-model rules and sort by index": {
			gpus: []GPU{h100, a100},
			cfg: Config{
				Default: Rule{SlicesPerGPU: 4},
				Models:  map[string]Rule{"NVIDIA H100 80GB HBM3": {SliceMemoryBytes: 10 * gib}},
			},
			want: []GPUSlices{
				{GPU: a100, Slices: 4, SliceMemoryBytes: 10 * gib},
				{GPU: h100, Slices: 8, SliceMemoryBytes: 10 * gib},
			},
		},
		"uneven memory rounds slice down": {
			gpus: []GPU{{UUID: "GPU-x", Model: "x", MemoryBytes: 10}},
			cfg:  Config{Default: Rule{SlicesPerGPU: 3}},
			want: []GPUSlices{{GPU: GPU{UUID: "GPU-x", Model: "x", MemoryBytes: 10}, Slices: 3, SliceMemoryBytes: 3}},
		},
		"no rule":               {gpus: []GPU{a100}, cfg: Config{}, wantErr: "set slicesPerGPU or sliceMemory"},
		"both fields":           {gpus: []GPU{a100}, cfg: Config{Default: Rule{SlicesPerGPU: 2, SliceMemoryBytes: gib}}, wantErr: "not both"},
		"too many slices":       {gpus: []GPU{a100}, cfg: Config{Default: Rule{SlicesPerGPU: 1000}}, wantErr: "outside 1..256"},
		"negative slices":       {gpus: []GPU{a100}, cfg: Config{Default: Rule{SlicesPerGPU: -1}}, wantErr: "outside 1..256"},
		"slice larger than gpu": {gpus: []GPU{a100}, cfg: Config{Default: Rule{SliceMemoryBytes: 41 * gib}}, wantErr: "larger than the GPU"},
		"tiny slice memory":     {gpus: []GPU{a100}, cfg: Config{Default: Rule{SliceMemoryBytes: 1 << 20}}, wantErr: "more than 256"},
		"bad model rule":        {gpus: []GPU{a100}, cfg: Config{Default: Rule{SlicesPerGPU: 2}, Models: map[string]Rule{"m": {}}}, wantErr: `model "m"`},
		"duplicate uuid":        {gpus: []GPU{a100, {UUID: "GPU-a", Index: 1, MemoryBytes: gib}}, cfg: Config{Default: Rule{SlicesPerGPU: 2}}, wantErr: "duplicate UUID"},
		"duplicate index":       {gpus: []GPU{a100, {UUID: "GPU-b", Index: 0, MemoryBytes: gib}}, cfg: Config{Default: Rule{SlicesPerGPU: 2}}, wantErr: "duplicate index"},
		"zero memory":           {gpus: []GPU{{UUID: "GPU-z"}}, cfg: Config{Default: Rule{SlicesPerGPU: 2}}, wantErr: "reports no memory"},
		"uuid with separator":   {gpus: []GPU{{UUID: "GPU::z", MemoryBytes: gib}}, cfg: Config{Default: Rule{SlicesPerGPU: 2}}, wantErr: `contains "::"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l, err := NewLayout(tc.gpus, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewLayout() error = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, l.GPUs()); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestLayoutSliceIDsAndResolve(t *testing.T) {
	t.Parallel()
	l := node4(t)
	if got, want := l.TotalSlices(), 16; got != want {
		t.Errorf("TotalSlices() = %d, want %d", got, want)
	}
	all := l.SliceIDs()
	if all[0].String() != "GPU-0::0" || all[15].String() != "GPU-3::3" {
		t.Errorf("SliceIDs() = first %v last %v", all[0], all[15])
	}
	for _, bad := range []string{"GPU-9::0", "GPU-0::4", "nope"} {
		if _, err := l.Resolve(bad); err == nil {
			t.Errorf("Resolve(%q) succeeded, want error", bad)
		}
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	l := node4(t)
	tests := map[string]struct {
		ids     []string
		want    []GPULimit
		wantErr error
	}{
		"three slices of one gpu": {
			ids:  ids(2, 0, 1, 3),
			want: []GPULimit{{UUID: "GPU-2", Index: 2, Slices: 3, SlicesTotal: 4, MemoryBytes: 30 * gib, ComputeRatio: 0.75}},
		},
		"spanning two gpus sorted by index": {
			ids: cat(ids(3, 1), ids(0, 0, 1, 2, 3)),
			want: []GPULimit{
				{UUID: "GPU-0", Index: 0, Slices: 4, SlicesTotal: 4, MemoryBytes: 40 * gib, ComputeRatio: 1},
				{UUID: "GPU-3", Index: 3, Slices: 1, SlicesTotal: 4, MemoryBytes: 10 * gib, ComputeRatio: 0.25},
			},
		},
		"duplicate":    {ids: cat(ids(1, 1), ids(1, 1)), wantErr: ErrDuplicateSlice},
		"unknown gpu":  {ids: []string{"GPU-7::0"}, wantErr: ErrUnknownSlice},
		"index beyond": {ids: ids(1, 4), wantErr: ErrUnknownSlice},
		"malformed":    {ids: []string{"GPU-1"}, wantErr: ErrInvalidID},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := l.Limits(tc.ids)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Limits() error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestComputePercent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ k, n, want int }{{1, 4, 25}, {3, 4, 75}, {1, 3, 33}, {1, 256, 1}, {4, 4, 100}} {
		if got := (GPULimit{Slices: tc.k, SlicesTotal: tc.n}).ComputePercent(); got != tc.want {
			t.Errorf("%d/%d: ComputePercent() = %d, want %d", tc.k, tc.n, got, tc.want)
		}
	}
}

func TestPlace(t *testing.T) {
	t.Parallel()
	l := node4(t)
	all := cat(ids(0, 0, 1, 2, 3), ids(1, 0, 1, 2, 3), ids(2, 0, 1, 2, 3), ids(3, 0, 1, 2, 3))
	down := func(bad ...string) Healthy {
		return func(uuid string) bool {
			for _, b := range bad {
				if b == uuid {
					return false
				}
			}
			return true
		}
	}
	tests := map[string]struct {
		req     Request
		policy  Policy
		healthy Healthy
		want    []string
		wantErr error
	}{
		"binpack empty node takes lowest gpu": {
			req: Request{Available: all, Size: 3}, policy: Binpack, want: ids(0, 0, 1, 2),
		},
		"binpack prefers fullest gpu that fits": {
			// GPU 1 has 2 free, GPU 2 has 3 free; a request of 2 goes to GPU 1.
			req:    Request{Available: cat(ids(0, 0, 1, 2, 3), ids(1, 2, 3), ids(2, 1, 2, 3)), Size: 2},
			policy: Binpack, want: ids(1, 2, 3),
		},
		"spread prefers emptiest gpu": {
			req:    Request{Available: cat(ids(0, 3), ids(1, 0, 1, 2, 3), ids(2, 1, 2)), Size: 2},
			policy: Spread, want: ids(1, 0, 1),
		},
		"must include on one gpu keeps that gpu": {
			req:    Request{Available: all, MustInclude: ids(2, 3), Size: 2},
			policy: Binpack, want: ids(2, 0, 3),
		},
		"must include on a full gpu forces a span": {
			req:    Request{Available: cat(ids(0, 0, 1, 2, 3), ids(1, 3)), MustInclude: ids(1, 3), Size: 3},
			policy: Binpack, want: cat(ids(0, 0, 1), ids(1, 3)),
		},
		"must include on two gpus": {
			req:    Request{Available: all, MustInclude: cat(ids(1, 1), ids(3, 2)), Size: 3},
			policy: Binpack, want: cat(ids(1, 0, 1), ids(3, 2)),
		},
		"spans fewest gpus when none fits": {
			req:    Request{Available: cat(ids(0, 0), ids(1, 0, 1, 2), ids(2, 0, 1), ids(3, 3)), Size: 5},
			policy: Binpack, want: cat(ids(1, 0, 1, 2), ids(2, 0, 1)),
		},
		"unhealthy gpu is skipped": {
			req: Request{Available: all, Size: 4}, policy: Binpack, healthy: down("GPU-0"), want: ids(1, 0, 1, 2, 3),
		},
		"must include on unhealthy gpu": {
			req: Request{Available: all, MustInclude: ids(0, 1), Size: 2}, policy: Binpack, healthy: down("GPU-0"), wantErr: ErrCannotPlace,
		},
		"too few healthy": {
			req: Request{Available: all, Size: 13}, policy: Binpack, healthy: down("GPU-3"), wantErr: ErrCannotPlace,
		},
		"must include beyond size":   {req: Request{Available: all, MustInclude: ids(0, 0, 1), Size: 1}, wantErr: ErrCannotPlace},
		"must include not available": {req: Request{Available: ids(0, 0), MustInclude: ids(0, 1), Size: 1}, wantErr: ErrCannotPlace},
		"zero size":                  {req: Request{Available: all, Size: 0}, wantErr: ErrCannotPlace},
		"unknown available id":       {req: Request{Available: []string{"GPU-9::0"}, Size: 1}, wantErr: ErrUnknownSlice},
		"duplicates in available are ignored": {
			req: Request{Available: cat(ids(1, 0), ids(1, 0), ids(1, 1)), Size: 2}, want: ids(1, 0, 1),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := l.Place(tc.req, tc.policy, tc.healthy)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Place() = %v, %v; want error %v", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Policy{"": Binpack, "binpack": Binpack, "spread": Spread} {
		if got, err := ParsePolicy(in); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy(random) succeeded")
	}
}

// TestMIGInstancesCut: MIG instances of a profile with a rule are cut by
// it, beside whole GPUs; a GPU's instances share its index and are
// ordered by UUID after it; an instance of a profile without a rule is an
// error, never cut by the default rule.
func TestMIGInstancesCut(t *testing.T) {
	cfg := Config{Default: Rule{SlicesPerGPU: 8}, MIGProfiles: map[string]Rule{"3g.40gb": {SlicesPerGPU: 4}, "1g.10gb": {SliceMemoryBytes: 5 << 30}}}
	l, err := NewLayout([]GPU{
		{UUID: "MIG-b", Index: 0, MemoryBytes: 40 << 30, MIGProfile: "3g.40gb"},
		{UUID: "GPU-1", Index: 1, MemoryBytes: 80 << 30},
		{UUID: "MIG-a", Index: 0, MemoryBytes: 10 << 30, MIGProfile: "1g.10gb"},
	}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, g := range l.GPUs() {
		got = append(got, fmt.Sprintf("%s:%d:%d", g.UUID, g.Index, g.Slices))
	}
	if want := "MIG-a:0:2 MIG-b:0:4 GPU-1:1:8"; strings.Join(got, " ") != want {
		t.Errorf("layout %v, want %s", got, want)
	}
	lim, err := l.Limits([]string{"MIG-b::0", "MIG-b::1"})
	if err != nil || len(lim) != 1 || lim[0].MemoryBytes != 20<<30 || lim[0].ComputeRatio != 0.5 || lim[0].Index != 0 {
		t.Errorf("limits of half of MIG-b: %+v, %v", lim, err)
	}
	if _, err := NewLayout([]GPU{{UUID: "MIG-c", Index: 0, MemoryBytes: 20 << 30, MIGProfile: "2g.20gb"}}, cfg); err == nil {
		t.Error("an instance of a profile without a rule was cut")
	}
	if _, err := NewLayout([]GPU{{UUID: "GPU-x", Index: 0, MemoryBytes: 1 << 30}, {UUID: "GPU-y", Index: 0, MemoryBytes: 1 << 30}}, cfg); err == nil {
		t.Error("two whole GPUs with one index accepted")
	}
}
