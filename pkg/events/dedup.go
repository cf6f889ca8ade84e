package events

import "time"

// maxKeys bounds how many pod/reason keys the recorder remembers: a tenant
// that churns pods which each draw an event must not grow the agent's
// memory without end.
const maxKeys = 4096

// dedup holds back repeats of one key within a window and counts them, as
// the Event's count, in the next one sent. It remembers at most max keys.
type dedup struct {
	window time.Duration
	max    int
	last   map[string]time.Time // key -> when its last event was sent
	held   map[string]int       // key -> repeats held back since
}

func newDedup(window time.Duration, max int) *dedup {
	return &dedup{window: window, max: max, last: map[string]time.Time{}, held: map[string]int{}}
}

// admit reports whether an event for key at now is sent and, if so, how
// many occurrences it stands for (itself and the repeats held back).
func (d *dedup) admit(key string, now time.Time) (int, bool) {
	if t, ok := d.last[key]; ok && now.Sub(t) < d.window {
		d.held[key]++
		return 0, false
	}
	count := 1 + d.held[key]
	delete(d.held, key)
	if _, ok := d.last[key]; !ok && len(d.last) >= d.max {
		d.prune(now)
	}
	d.last[key] = now
	return count, true
}

// prune forgets keys whose window has passed, and, if every key is still
// within its window, arbitrary ones until there is room: at worst such a
// key's next repeat is sent early, never lost.
func (d *dedup) prune(now time.Time) {
	for k, t := range d.last {
		if now.Sub(t) >= d.window {
			delete(d.last, k)
			delete(d.held, k)
		}
	}
	for k := range d.last {
		if len(d.last) < d.max {
			break
		}
		delete(d.last, k)
		delete(d.held, k)
	}
}
