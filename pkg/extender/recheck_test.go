package extender_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/gpuslice/gpuslice/pkg/extender"
)

// TestRecheckWakesTheSchedulerForARefusalOnAStaleCache is the race the
// wake-up repairs: a GPU frees, the scheduler's cache sees it first and
// tries the pending pod again, the extender refuses it on its own cache's
// old state, and the scheduler then waits for another event. Once the
// extender's cache holds the change (NodeChanged), Recheck names the node,
// once.
func TestRecheckWakesTheSchedulerForARefusalOnAStaleCache(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2, 2})
	c.publish(t, "n2", []int{1, 1})
	now := time.Unix(1000, 0)
	e := extender.New(c, extender.Options{Resource: vgpu, RecheckAfter: 2 * time.Second, Now: func() time.Time { return now }})
	three := pod("three", 3)
	c.put(three)
	if r := filter(e, three, "n1", "n2"); len(*r.NodeNames) != 0 {
		t.Fatalf("passed %v on 2+2 and 1+1 free", *r.NodeNames)
	}
	// The scheduler tries it again on the event; the extender's cache
	// still has the old state.
	now = now.Add(time.Second)
	if r := filter(e, three, "n1", "n2"); len(*r.NodeNames) != 0 {
		t.Fatalf("passed %v on the old state", *r.NodeNames)
	}
	if e.Refused() != 1 {
		t.Fatalf("remembers %d refused pods, want 1", e.Refused())
	}
	// Now the extender's cache gets it.
	now = now.Add(100 * time.Millisecond)
	c.publish(t, "n1", []int{4, 2})
	e.NodeChanged("n1")
	c.publish(t, "n2", []int{2, 1}) // still too small for three
	e.NodeChanged("n2")
	if got := e.Recheck(); len(got) != 0 {
		t.Fatalf("woke %v before RecheckAfter: the scheduler's own retry may still come", got)
	}
	now = now.Add(2 * time.Second)
	if got := fmt.Sprint(e.Recheck()); got != "[n1]" {
		t.Fatalf("woke %s, want [n1]: three fits there now and was refused before the change", got)
	}
	if got := e.Recheck(); len(got) != 0 {
		t.Fatalf("woke %v again for the same change", got)
	}
	// The retry the wake-up causes places it; nothing more is woken.
	if r := filter(e, three, "n1", "n2"); fmt.Sprint(*r.NodeNames) != "[n1]" {
		t.Fatalf("passed %v after the wake-up, want [n1]", *r.NodeNames)
	}
	if e.Refused() != 0 {
		t.Fatalf("remembers %d refused pods after it passed, want 0", e.Refused())
	}
}

// TestRecheckLeavesRefusalsJudgedOnTheChange: a pod the scheduler tried
// again after the extender's cache had the change was judged on it: no
// wake-up, whether it fitted or not; nor for a pod now bound or gone.
func TestRecheckLeavesRefusalsJudgedOnTheChange(t *testing.T) {
	c := newCluster()
	c.publish(t, "n1", []int{2, 2})
	now := time.Unix(1000, 0)
	e := extender.New(c, extender.Options{Resource: vgpu, RecheckAfter: time.Second, Now: func() time.Time { return now }})
	four, gone := pod("four", 4), pod("gone", 3)
	c.put(four)
	c.put(gone)
	filter(e, four, "n1")
	filter(e, gone, "n1")
	now = now.Add(time.Second)
	c.publish(t, "n1", []int{3, 2})
	e.NodeChanged("n1")
	now = now.Add(time.Second)
	filter(e, four, "n1") // judged on 3+2: still refused
	c.remove(gone)
	now = now.Add(time.Second)
	if got := e.Recheck(); len(got) != 0 {
		t.Fatalf("woke %v: four was refused on the new state, gone is gone", got)
	}
	if e.Refused() != 1 {
		t.Fatalf("remembers %d refused pods, want 1 (four)", e.Refused())
	}
	// A node that appears in the cache after a refusal for its absence.
	filter(e, four, "n9")
	now = now.Add(time.Second)
	c.publish(t, "n9", []int{4})
	e.NodeChanged("n9")
	now = now.Add(time.Second)
	if got := fmt.Sprint(e.Recheck()); got != "[n9]" {
		t.Fatalf("woke %s, want [n9]", got)
	}
}
