package enforce_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/enforce"
)

// BenchmarkAccuracy measures how closely the compute throttle holds greedy
// workloads sharing one GPU to their shares: real workload processes in
// real cgroup v2 cgroups, the real sampler (250 ms) and enforcer, on the
// fake GPU. Each run settles for 8 s, then averages each pod's measured SM
// share over 30 s (3 s with -short). It reports the largest error against
// the entitlement in percentage points: the limit under strict; under
// burst the limit plus its part of any unallocated share.
func BenchmarkAccuracy(b *testing.B) {
	settle, window := 8*time.Second, 30*time.Second
	if testing.Short() {
		settle, window = 3*time.Second, 3*time.Second
	}
	for _, policy := range []enforce.Policy{enforce.Strict, enforce.Burst} {
		for _, limits := range [][]int{{3, 7}, {1, 3, 5}, {1, 1, 3, 5}} {
			name := make([]string, len(limits))
			for i, l := range limits {
				name[i] = fmt.Sprint(l * 10)
			}
			b.Run(fmt.Sprintf("%s/%s", policy, strings.Join(name, "-")), func(b *testing.B) {
				for b.Loop() {
					demands := make([]float64, len(limits))
					members := make([]enforce.Member, len(limits))
					sum := 0.0
					for i, l := range limits {
						demands[i] = 1
						members[i] = enforce.Member{Limit: float64(l) / 10, Policy: policy}
						sum += float64(l) / 10
					}
					s := StartSetup(b, limits, demands, policy)
					shares := s.Shares(settle, window)
					worst := 0.0
					for i, m := range members {
						want := enforce.Entitlement(m, sum)
						got := shares[fmt.Sprintf("p%d", i)]
						worst = max(worst, math.Abs(got-want)*100)
						b.ReportMetric(got*100, fmt.Sprintf("p%d-%%", i))
					}
					b.ReportMetric(worst, "max-error-pp")
				}
			})
		}
	}
	// Overhead on a container the throttle leaves alone: one burst pod
	// alone on the GPU, with and without enforcement running.
	for _, enforcing := range []bool{false, true} {
		b.Run(fmt.Sprintf("unthrottled/enforcing=%v", enforcing), func(b *testing.B) {
			for b.Loop() {
				s := startSetup(b, []int{3}, []float64{1}, enforce.Burst, enforcing)
				b.ReportMetric(s.Shares(settle, window)["p0"]*100, "share-%")
			}
		})
	}
}
