package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/gpuslice/gpuslice/internal/fakegpu"
	"github.com/gpuslice/gpuslice/pkg/contract"
	"github.com/gpuslice/gpuslice/pkg/deviceplugin"
	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/frontend"
	"github.com/gpuslice/gpuslice/pkg/kubeletstate"
	"github.com/gpuslice/gpuslice/pkg/podresources"
	"github.com/gpuslice/gpuslice/test/kubeletstub"
)

// TestFrontEndsNeverBothPassOnOneGPU: the race from the review. A vgpu
// admission and a claim prepare on the same GPU, started together 200
// times, in a model of the kubelet's ordering (pod-resources lists a vgpu
// container only once the plugin's Allocate has returned) over the real
// device plugin with the agent's real reader of the driver's record, and
// the real Preparer with the driver's real reader of the device plugin's
// slices (pod-resources and the recent grants, as node.Holdings). Under
// the node's front-end lock at most one of them passes each round; before,
// both passed in about one round of ten.
func TestFrontEndsNeverBothPassOnOneGPU(t *testing.T) {
	dir := t.TempDir()
	record := filepath.Join(dir, "dra-prepared.json")
	var offset atomic.Int64 // moves the grants' clock past their TTL between rounds
	guard := frontend.NewAt(dir, func() time.Time { return time.Now().Add(time.Duration(offset.Load())) })
	node := kubeletstub.StartNodeWith(t, fakegpu.Config{Preset: "A100-40GB", Count: 1}, 4, func(o *deviceplugin.Options) {
		o.DRAGPUs = kubeletstate.ClaimedGPUsReader(record)
		o.FrontEnds = guard
	})
	uuid := node.Devices[0].UUID
	slice := node.Layout.SliceIDs()[0].String()
	// The kubelet's podDevices: filled after Allocate returns, as the
	// device manager does; what pod-resources lists.
	var mu sync.Mutex
	listed := map[string]bool{}
	prep, err := dra.NewPreparer(dra.PreparerOptions{
		Pool: "n1", Layout: node.Layout, CDIDir: t.TempDir(), StatePath: record,
		Nodes: dra.Nodes{DevRoot: "/dev", Minor: map[string]int{uuid: 0}},
		DevicePluginGPUs: kubeletstate.SlicedGPUsReader(lister(func() []podresources.Assignment {
			mu.Lock()
			defer mu.Unlock()
			if !listed[uuid] {
				return nil
			}
			return []podresources.Assignment{{Namespace: "ml", Pod: "vgpu", Container: "main", DeviceIDs: []string{slice}}}
		}), guard, contract.ResourceName, node.Layout),
		FrontEnds: guard,
	})
	if err != nil {
		t.Fatal(err)
	}
	both, vgpuWon, claimWon := 0, 0, 0
	var lastA, lastP error
	for i := range 200 {
		claim := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ml", Name: fmt.Sprint("c", i), UID: types.UID(fmt.Sprint("uid-", i))}}
		claim.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
			Request: "gpu", Driver: dra.DriverName, Pool: "n1", Device: "gpu-0",
			ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
				dra.CapacityCompute: *resource.NewQuantity(1, resource.DecimalSI),
				dra.CapacityMemory:  *resource.NewQuantity(10<<30, resource.BinarySI),
			},
		}}}}
		start := make(chan struct{})
		var aErr, pErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			<-start
			_, aErr = node.Connection.Client().Allocate(context.Background(), &pluginapi.AllocateRequest{
				ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{slice}}}})
			if aErr == nil {
				mu.Lock()
				listed[uuid] = true
				mu.Unlock()
			}
		})
		wg.Go(func() {
			<-start
			// The two overlap by up to a millisecond either way.
			time.Sleep(time.Duration(i%11) * 100 * time.Microsecond)
			_, pErr = prep.Prepare(claim)
		})
		close(start)
		wg.Wait()
		if aErr != nil {
			lastA = aErr
		}
		if pErr != nil {
			lastP = pErr
		}
		switch {
		case aErr == nil && pErr == nil:
			both++
		case aErr == nil:
			vgpuWon++
		case pErr == nil:
			claimWon++
		}
		// The round's pod and claim end.
		mu.Lock()
		delete(listed, uuid)
		mu.Unlock()
		if pErr == nil {
			if err := prep.Unprepare(claim.UID); err != nil {
				t.Fatal(err)
			}
		}
		offset.Add(int64(frontend.PendingTTL + time.Second))
	}
	t.Logf("200 rounds: vgpu won %d, the claim won %d, both passed %d (last refusals: %v; %v)", vgpuWon, claimWon, both, lastA, lastP)
	if both != 0 {
		t.Errorf("in %d of 200 rounds a vgpu container and a claim were both given GPU %s", both, uuid)
	}
	if vgpuWon == 0 || claimWon == 0 {
		t.Errorf("vgpu won %d rounds and the claim %d: the race was not run from both sides", vgpuWon, claimWon)
	}
}

// lister is a pod-resources answer read from a function.
type lister func() []podresources.Assignment

func (l lister) List(context.Context) ([]podresources.Assignment, error) { return l(), nil }
