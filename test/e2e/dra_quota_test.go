package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/gpuslice/gpuslice/pkg/dra"
	"github.com/gpuslice/gpuslice/pkg/quota"
)

// TestDRAQuota: GPUQuotas hold for pods on DRA claims. First the attack,
// against the controller without --dra-device-classes: a namespace capped
// at 2 slices runs a pod on a claim for 3, because its ResourceQuota caps
// only nvidia.com/vgpu. With the classes, the same namespace's next claim
// is refused at admission, maxClaimSlices opens room for whole GPUs only,
// a DRA pod's GPU time exhausts a budget (which then refuses claims), and
// an idle DRA pod is evicted.
func TestDRAQuota(t *testing.T) {
	requireDRA(t)
	ensureDeviceClass(t)
	cs := c.API.Clientset(t)
	ctx := context.Background()
	key := corev1.ResourceName(quota.DeviceClassQuotaKey(dra.DriverName))
	rig := startQuotaRig(t)

	capped := newNamespace(t, "dra-capped")
	createTemplates(t, capped, claimTemplate("three", "3", "30Gi"))
	rig.gpuQuota(capped, map[string]any{"maxSlices": int64(2)})
	waitFor(t, "the vgpu ResourceQuota", 30*time.Second, func() bool {
		rq, err := cs.CoreV1().ResourceQuotas(capped).Get(ctx, quota.QuotaName, metav1.GetOptions{})
		return err == nil && rq.Spec.Hard.Name("requests.nvidia.com/vgpu", "").Value() == 2
	})
	if _, err := cs.CoreV1().Pods(capped).Create(ctx, claimPod("over", "three", "sleep 3600"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, capped, "over")
	t.Log("without --dra-device-classes: a pod on a 3-slice claim runs in a namespace capped at 2 slices")

	rig.startController("--dra-device-classes=" + dra.DriverName)
	rq := waitClaimLimit(t, capped, key, 1)
	st := rig.status(capped)
	if used, _, _ := unstructured.NestedInt64(st, "usedClaimSlices"); used != 3 || rig.condition(capped, quota.ConditionClaimsLimited) != "True" {
		t.Errorf("status %v; want usedClaimSlices 3 and ClaimsLimited", st)
	}
	t.Logf("with the classes, maxSlices alone closes claims: %s hard %s used %s", key, rq.Spec.Hard.Name(key, ""), rq.Status.Used.Name(key, ""))
	newClaim := func(ns, name string) error {
		_, err := cs.ResourceV1().ResourceClaims(ns).Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       claimTemplate(name, "1", "").Spec.Spec,
		}, metav1.CreateOptions{})
		return err
	}
	refused := func(ns, name string) {
		t.Helper()
		err := newClaim(ns, name)
		if err == nil || !strings.Contains(err.Error(), "exceeded quota") {
			t.Fatalf("claim %s/%s: %v; want refused with exceeded quota", ns, name, err)
		}
		t.Logf("claim %s refused: %v", name, err)
	}
	refused(capped, "more")

	// Room for claims: 8 slices, 3 held, a new device may take a whole
	// 4-slice GPU: one more device.
	u, err := rig.dyn.Resource(quota.GVR).Namespace(capped).Get(ctx, "team", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(u.Object, int64(8), "spec", "maxClaimSlices")
	if _, err := rig.dyn.Resource(quota.GVR).Namespace(capped).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitClaimLimit(t, capped, key, 2)
	if err := newClaim(capped, "fits"); err != nil {
		t.Fatalf("a claim within maxClaimSlices' room: %v", err)
	}
	refused(capped, "past-the-room")

	// A budget spent by a DRA pod's GPU time, and an idle DRA pod.
	budget, idle := newNamespace(t, "dra-budget"), newNamespace(t, "dra-idle")
	for _, ns := range []string{budget, idle} {
		createTemplates(t, ns, claimTemplate("one", "1", "10Gi"))
	}
	rig.gpuQuota(budget, map[string]any{"maxClaimSlices": int64(64), "budget": map[string]any{"gpuHours": 0.0003, "window": "1h"}})
	rig.gpuQuota(idle, map[string]any{"idle": map[string]any{"belowUtilization": 0.05, "for": "15s", "action": "Evict"}})
	for ns, p := range map[string]*corev1.Pod{
		budget: withHostPID(claimPod("burner", "one", "exec /bin/workload --demand 1 --memory-mib 256")),
		idle:   withHostPID(claimPod("sleeper", "one", "exec /bin/workload --demand 0 --memory-mib 256")),
	} {
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, budget, "burner")
	sleeper := waitRunning(t, idle, "sleeper")
	start := time.Now()
	waitFor(t, "BudgetExhausted by a DRA pod", 90*time.Second, func() bool { return rig.condition(budget, quota.ConditionBudgetExhausted) == "True" })
	t.Logf("a DRA pod's GPU time exhausted 0.0003 GPU-hours %v after it ran", time.Since(start).Round(time.Second))
	waitClaimLimit(t, budget, key, 1)
	refused(budget, "latecomer")
	if p, err := cs.CoreV1().Pods(budget).Get(ctx, "burner", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Errorf("the running DRA pod was disturbed: %v", err)
	}
	waitFor(t, "the idle DRA pod evicted", 90*time.Second, func() bool {
		p, err := cs.CoreV1().Pods(idle).Get(ctx, "sleeper", metav1.GetOptions{})
		return apierrors.IsNotFound(err) || (err == nil && (p.DeletionTimestamp != nil || p.UID != sleeper.UID))
	})
	t.Logf("idle DRA pod evicted %v after it ran (idle for: 15s)", time.Since(sleeper.Status.StartTime.Time).Round(time.Second))
}

// waitClaimLimit waits until the controller's ResourceQuota in ns limits
// key to want and the API server has counted its use.
func waitClaimLimit(t *testing.T, ns string, key corev1.ResourceName, want int64) *corev1.ResourceQuota {
	t.Helper()
	cs := c.API.Clientset(t)
	var rq *corev1.ResourceQuota
	waitFor(t, "claim device limit "+string(key), 30*time.Second, func() bool {
		var err error
		rq, err = cs.CoreV1().ResourceQuotas(ns).Get(context.Background(), quota.QuotaName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		_, counted := rq.Status.Used[key]
		hard, ok := rq.Status.Hard[key]
		return counted && ok && hard.Value() == want && rq.Spec.Hard.Name(key, "").Value() == want
	})
	return rq
}
