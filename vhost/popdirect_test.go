package vhost_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// TestPopDirectTakesLoneChains: PopDirect pops, in ring order, the chains
// of one writable (or readable) descriptor and stops at the first other
// chain, which Pop (or a PopDirect of the other kind) then returns;
// positions, counters and used entries are as if Pop had popped every
// chain.
func TestPopDirectTakesLoneChains(t *testing.T) {
	qp := newQueuePair(t, 16, false, false)
	w := func(off uint64, n uint32) []guest.Buf { return []guest.Buf{{GPA: qp.buf + off, Len: n, Write: true}} }
	var heads []uint16
	for _, bufs := range [][]guest.Buf{
		w(0, 2048), w(4096, 1024),
		{{GPA: qp.buf + 8192, Len: 12, Write: true}, {GPA: qp.buf + 8448, Len: 1500, Write: true}}, // two pieces
		{{GPA: qp.buf + 12288, Len: 64}}, // readable
		w(16384, 2048),
	} {
		h, err := qp.drv.Add(bufs, false)
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	copy(qp.mem.Bytes(qp.buf+4096, 4), "wxyz")
	copy(qp.mem.Bytes(qp.buf+12288, 4), "rdbl")
	out := make([]vhost.DirectBuf, 8)
	if n := qp.dev.PopDirect(out, true); n != 0 {
		t.Fatalf("popped %d before publish", n)
	}
	qp.drv.Publish()
	if n := qp.dev.PopDirect(out, true); n != 2 {
		t.Fatalf("PopDirect = %d, want the 2 lone writable chains before the two-piece one", n)
	}
	if out[0].Head != heads[0] || out[0].GPA != qp.buf || len(out[0].Buf) != 2048 ||
		out[1].Head != heads[1] || out[1].GPA != qp.buf+4096 || string(out[1].Buf[:4]) != "wxyz" || len(out[1].Buf) != 1024 {
		t.Fatalf("popped %+v %+v", out[0], out[1])
	}
	if pos := qp.dev.AvailPos(); pos != 2 {
		t.Fatalf("AvailPos = %d after two chains", pos)
	}
	c := newChain(4)
	for _, writable := range []bool{true, false} {
		if n := qp.dev.PopDirect(out, writable); n != 0 {
			t.Fatalf("PopDirect(writable %v) took %d chains of two pieces", writable, n)
		}
	}
	if ok, err := qp.dev.Pop(&c); !ok || err != nil || c.Head != heads[2] {
		t.Fatalf("Pop = %v, %v, head %d; want head %d", ok, err, c.Head, heads[2])
	}
	// The readable chain: not for a writable pop, taken by a readable one.
	if n := qp.dev.PopDirect(out, true); n != 0 {
		t.Fatalf("PopDirect(writable) took %d readable chains", n)
	}
	if n := qp.dev.PopDirect(out, false); n != 1 || out[0].Head != heads[3] || out[0].GPA != qp.buf+12288 ||
		string(out[0].Buf[:4]) != "rdbl" || len(out[0].Buf) != 64 {
		t.Fatalf("PopDirect(readable) = %d, %+v", n, out[0])
	}
	if n := qp.dev.PopDirect(out, false); n != 0 {
		t.Fatalf("PopDirect(readable) took %d writable chains", n)
	}
	if n := qp.dev.PopDirect(out[:1], true); n != 1 || out[0].Head != heads[4] {
		t.Fatalf("PopDirect = %d (head %d), want head %d", n, out[0].Head, heads[4])
	}
	if n := qp.dev.PopDirect(out, true); n != 0 {
		t.Fatalf("PopDirect = %d on an empty ring", n)
	}
	if got := qp.dev.Counters().Popped; got != 5 {
		t.Fatalf("Popped = %d, want 5", got)
	}
	// Rewinding gives the chains back to both pops alike.
	qp.dev.RewindTo(0)
	if n := qp.dev.PopDirect(out, true); n != 2 || out[0].Head != heads[0] {
		t.Fatalf("after RewindTo(0): PopDirect = %d, head %d", n, out[0].Head)
	}
	qp.dev.Push(out[1].Head, 100)
	qp.dev.Push(out[0].Head, 60)
	qp.dev.Flush()
	if h, n, ok := qp.drv.Used(); !ok || h != heads[1] || n != 100 {
		t.Fatalf("first used entry %d %d %v", h, n, ok)
	}
}

// TestPopDirectLeavesErrorsToPop: a chain PopDirect does not take
// because it is malformed still breaks the queue at the next Pop, with
// Pop's reason; a bad avail index is not swallowed either. An empty
// buffer, which is no error, is Pop's to hand over (with no segment).
func TestPopDirectLeavesErrorsToPop(t *testing.T) {
	cases := map[string]struct {
		corrupt func(qp *queuePair, head uint16)
		reason  string
		// taken: chains PopDirect pops before the bad one (a bad head
		// is a new entry after the good chain's).
		taken int
	}{
		"outside-memory": {func(qp *queuePair, head uint16) {
			binary.LittleEndian.PutUint64(qp.drv.Desc(head), qp.mem.End()+4096)
		}, "outside guest memory", 0},
		"head-out-of-range": {func(qp *queuePair, head uint16) {
			qp.drv.Repost(500)
			qp.drv.PublishRaw(qp.drv.AvailIdx())
		}, "head index out of range", 1},
		"avail-index-jump": {func(qp *queuePair, head uint16) {
			qp.drv.PublishRaw(qp.drv.AvailIdx() + 100)
		}, "avail index moved", 0},
		"empty-buffer": {func(qp *queuePair, head uint16) {
			binary.LittleEndian.PutUint32(qp.drv.Desc(head)[8:], 0)
		}, "", 0},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			qp := newQueuePair(t, 16, false, false)
			good, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 2048, Write: true}}, false)
			if err != nil {
				t.Fatal(err)
			}
			qp.drv.Publish()
			out := make([]vhost.DirectBuf, 4)
			if n := qp.dev.PopDirect(out, true); n != 1 || out[0].Head != good {
				t.Fatalf("PopDirect = %d", n)
			}
			head, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf + 4096, Len: 2048, Write: true}}, false)
			if err != nil {
				t.Fatal(err)
			}
			qp.drv.Publish()
			tc.corrupt(qp, head)
			if n := qp.dev.PopDirect(out, true); n != tc.taken {
				t.Fatalf("PopDirect took %d chains of a corrupt ring, want %d", n, tc.taken)
			}
			c := newChain(4)
			ok, err := qp.dev.Pop(&c)
			if tc.reason == "" {
				if !ok || err != nil || c.Head != head || c.WriteLen != 0 || len(c.Segs) != 0 {
					t.Fatalf("Pop = %v, %v, %+v; want chain %d with nothing to write", ok, err, c, head)
				}
				return
			}
			if ok || !errors.Is(err, vhost.ErrQueueBroken) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Pop = %v, %v; want the queue broken: %s", ok, err, tc.reason)
			}
			if n := qp.dev.PopDirect(out, true); n != 0 {
				t.Fatalf("PopDirect = %d on a broken queue", n)
			}
		})
	}
}

// TestPopDirectServesOnlySplitRings: on a packed ring, and while the
// dirty log is on (Pop records what the device may write), PopDirect
// leaves every chain to Pop.
func TestPopDirectServesOnlySplitRings(t *testing.T) {
	logged := newQueuePair(t, 16, false, false)
	if _, err := logged.drv.Add([]guest.Buf{{GPA: logged.buf, Len: 2048, Write: true}}, false); err != nil {
		t.Fatal(err)
	}
	logged.drv.Publish()
	logged.dev.StartLogForTest(2048, false)
	if n := logged.dev.PopDirect(make([]vhost.DirectBuf, 4), true); n != 0 {
		t.Fatalf("PopDirect = %d while logging", n)
	}

	qp := newPackedPair(t, 16, false)
	if _, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf, Len: 2048, Write: true}}, false); err != nil {
		t.Fatal(err)
	}
	qp.drv.Publish()
	if n := qp.dev.PopDirect(make([]vhost.DirectBuf, 4), true); n != 0 {
		t.Fatalf("PopDirect = %d on a packed ring", n)
	}
	c := newChain(4)
	if ok, err := qp.dev.Pop(&c); !ok || err != nil {
		t.Fatalf("Pop = %v, %v", ok, err)
	}
}

// TestPushReadBurst: PushRead of more heads than Push stages at once (64)
// gives the driver every used entry in order, each with length 0, in the
// ring slots Push would have used, split and packed.
func TestPushReadBurst(t *testing.T) {
	for _, packed := range []bool{false, true} {
		qp := newRingPair(t, 128, false, false, packed)
		const n = 100
		var heads []uint16
		c := newChain(4)
		for i := range n {
			if _, err := qp.drv.Add([]guest.Buf{{GPA: qp.buf + uint64(i)*64, Len: 64}}, false); err != nil {
				t.Fatal(err)
			}
		}
		qp.drv.Publish()
		for range n {
			if ok, err := qp.dev.Pop(&c); !ok || err != nil {
				t.Fatalf("packed %v: Pop = %v, %v", packed, ok, err)
			}
			heads = append(heads, c.Head)
		}
		// Completed in an order other than the ring's, as a NIC's
		// completions need not be.
		heads[3], heads[70] = heads[70], heads[3]
		qp.dev.PushRead(heads)
		qp.dev.Flush()
		for i, want := range heads {
			h, l, ok := qp.drv.Used()
			if !ok || h != want || l != 0 {
				t.Fatalf("packed %v: used entry %d = %d, %d, %v; want head %d, length 0", packed, i, h, l, ok, want)
			}
		}
		if _, _, ok := qp.drv.Used(); ok {
			t.Fatalf("packed %v: more used entries than pushed", packed)
		}
		if got := qp.dev.Counters().Pushed; got != n {
			t.Fatalf("packed %v: Pushed = %d, want %d", packed, got, n)
		}
	}
}
