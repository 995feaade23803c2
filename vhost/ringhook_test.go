package vhost_test

import (
	"sync"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// holdingHook plays a zero-copy engine: it keeps chains it popped (as if
// posted to a NIC) and gives them back only when the device stops the ring.
type holdingHook struct {
	recordingHook
	dev *vhost.Device

	mu    sync.Mutex
	held  map[*vhost.Virtqueue][]uint16
	stops []stopEvent
}

type stopEvent struct {
	index      int
	lockHeld   bool // the data-path lock was held during StopRing
	unmapsThen int
}

func (h *holdingHook) StopRing(q *vhost.Virtqueue) {
	locked := !h.dev.TryLockDataPathForTest()
	_, _, unmaps := h.counts()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stops = append(h.stops, stopEvent{q.Index(), locked, unmaps})
	for _, head := range h.held[q] {
		q.Push(head, 0)
	}
	q.Flush()
	delete(h.held, q)
}

// hold pops every available chain of vring i (data-path lock taken).
func (h *holdingHook) hold(t *testing.T, i int) int {
	t.Helper()
	h.dev.LockDataPath()
	defer h.dev.UnlockDataPath()
	q := h.dev.RxQueue(i / 2)
	if i%2 == 1 {
		q = h.dev.TxQueue(i / 2)
	}
	if q == nil {
		t.Fatalf("vring %d not running", i)
	}
	c := vhost.Chain{Segs: make([]vhost.Segment, 0, 8)}
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for {
		ok, err := q.Pop(&c)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return n
		}
		h.held[q] = append(h.held[q], c.Head)
		n++
	}
}

func (h *holdingHook) events() []stopEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]stopEvent(nil), h.stops...)
}

func TestRingHookStopsBeforeReply(t *testing.T) {
	hook := &holdingHook{recordingHook: recordingHook{mapped: map[*byte]int{}}, held: map[*vhost.Virtqueue][]uint16{}}
	s := vhosttest.Serve(t, vhost.Config{Hook: hook})
	hook.dev = s.Dev
	g, err := guest.Dial(s.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	// GET_VRING_BASE: the held chains are used before the reply.
	if err := g.PostRx(0, 10); err != nil {
		t.Fatal(err)
	}
	if n := hook.hold(t, 0); n != 10 {
		t.Fatalf("popped %d chains, want 10", n)
	}
	base, err := g.StopRing(0)
	if err != nil {
		t.Fatal(err)
	}
	if base != 10 || g.Ring(0).UsedIdx() != 10 {
		t.Fatalf("base %d, used idx %d after GET_VRING_BASE; want both 10", base, g.Ring(0).UsedIdx())
	}
	if ev := hook.events(); len(ev) != 1 || ev[0].index != 0 || !ev[0].lockHeld {
		t.Fatalf("stop events %+v, want one for vring 0 under the data-path lock", ev)
	}
	if err := g.ResumeRing(0); err != nil {
		t.Fatal(err)
	}

	// SET_VRING_ENABLE 0.
	if err := g.PostRx(0, 3); err != nil {
		t.Fatal(err)
	}
	hook.hold(t, 0)
	if err := g.SetEnable(0, false); err != nil {
		t.Fatal(err)
	}
	if used := g.Ring(0).UsedIdx(); used != 13 {
		t.Fatalf("used idx %d after SET_VRING_ENABLE 0, want 13", used)
	}
	if err := g.SetEnable(0, true); err != nil {
		t.Fatal(err)
	}

	// A new memory table: rings stop before the old regions go.
	if err := g.PostRx(0, 2); err != nil {
		t.Fatal(err)
	}
	hook.hold(t, 0)
	_, _, unmapsBefore := hook.counts()
	if _, err := g.FE.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(g.Mem.Regions()), g.Mem.FD()); err != nil {
		t.Fatal(err)
	}
	ev := hook.events()
	last := ev[len(ev)-1]
	if len(ev) < 4 || last.unmapsThen != unmapsBefore {
		t.Fatalf("stop events %+v: want both rings stopped before the old region was unmapped (%d unmaps before)", ev, unmapsBefore)
	}
	if used := g.Ring(0).UsedIdx(); used != 15 {
		t.Fatalf("used idx %d after a new memory table, want 15", used)
	}

	// RESET_OWNER stops running rings through the hook too.
	n := len(hook.events())
	if _, err := g.FE.Request(vhost.ReqResetOwner, nil); err != nil {
		t.Fatal(err)
	}
	if got := len(hook.events()) - n; got != 2 {
		t.Fatalf("RESET_OWNER stopped %d rings through the hook, want 2", got)
	}
}
