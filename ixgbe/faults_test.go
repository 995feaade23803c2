package ixgbe

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// faultEnv is a port with an RX queue full of posted buffers and a
// recorder on the wire, for driving traffic through faults.
type faultEnv struct {
	txEnv
	rxq    *RxQueue
	posted []ring.Buf
	cookie ring.Cookie
}

func newFaultEnv(t *testing.T, cfg Config) *faultEnv {
	t.Helper()
	env := &faultEnv{txEnv: newTxEnv(t, cfg), cookie: 1}
	env.rxq = env.p.RxQueue(0)
	env.posted = env.bufs.rxBufs(t, 32)
	if n := env.rxq.Post(env.posted); n != len(env.posted) {
		t.Fatalf("Post took %d of %d buffers", n, len(env.posted))
	}
	return env
}

// frame is the i-th test frame to the port (to is false: from it).
func (e *faultEnv) frame(i int, to bool) []byte {
	dst := [6]byte{2, 0, 0, 0, 0, 9}
	if to {
		dst = [6]byte(e.p.MAC())
	}
	f := udpFrame(dst, 1000+uint16(i), 53, payloadBytes(40+i, byte(i)))
	fillChecksums(f)
	return f
}

// receive harvests n frames and checks they are want, in order.
func (e *faultEnv) receive(t *testing.T, want [][]byte) {
	t.Helper()
	for i, d := range harvestN(t, e.pf, e.rxq, len(want)) {
		if got := e.bufs.Bytes(uint32(d.Cookie))[:d.Len]; !bytes.Equal(got, want[i]) {
			t.Errorf("received frame %d differs from the one sent (%d vs %d bytes)", i, len(got), len(want[i]))
		}
		// Give the buffer back, so the queue never runs dry.
		if e.rxq.Post([]ring.Buf{{IOVA: e.bufs.IOVA(uint32(d.Cookie)), Len: uint32(e.bufs.BufSize()), Cookie: d.Cookie}}) != 1 {
			t.Fatal("could not repost a harvested buffer")
		}
	}
}

// send submits frames one packet each and waits for every cookie back;
// it returns what the wire carried meanwhile.
func (e *faultEnv) send(t *testing.T, frames [][]byte) [][]byte {
	t.Helper()
	var pkts []ring.TxPkt
	var idx []uint32
	for _, f := range frames {
		seg, i := e.bufs.txSeg(t, f)
		pkts = append(pkts, ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: e.cookie})
		idx = append(idx, i)
		e.cookie++
	}
	if n := e.q.Submit(pkts); n != len(pkts) {
		t.Fatalf("Submit took %d of %d packets", n, len(pkts))
	}
	for i, c := range reclaimN(t, e.pf, e.q, len(pkts)) {
		if c != pkts[i].Cookie {
			t.Fatalf("reclaimed cookie %d, want %d (submission order)", c, pkts[i].Cookie)
		}
	}
	e.bufs.Put(idx)
	return e.rec.take()
}

// flows checks that after a fault, traffic goes through both ways again.
func (e *faultEnv) flows(t *testing.T, seed int) {
	t.Helper()
	var in, out [][]byte
	for i := range 4 {
		in = append(in, e.frame(seed+i, true))
		out = append(out, e.frame(seed+i, false))
	}
	for _, f := range in {
		e.pf.Deliver(f)
	}
	e.receive(t, in)
	if got := e.send(t, out); len(got) != len(out) {
		t.Fatalf("after the fault the wire carried %d of %d frames", len(got), len(out))
	} else {
		for i := range got {
			if !bytes.Equal(got[i], out[i]) {
				t.Errorf("frame %d on the wire differs from the one submitted", i)
			}
		}
	}
}

// TestLinkFlap: the driver sees the link go down and come back; frames
// that arrive or are sent meanwhile are lost and counted (the model's
// RxNotReady and TxNoLink: the 82599 has no register for frames a dead
// link never delivered), every TX cookie still comes back, and traffic
// flows once the link is up.
func TestLinkFlap(t *testing.T) {
	var events []Link
	env := newFaultEnv(t, Config{OnLinkChange: func(l Link) { events = append(events, l) }})
	env.p.PollLink()
	before := env.pf.Counters()

	env.pf.FlapLink(100)
	if l := env.p.PollLink(); l.Up {
		t.Fatal("link reads up right after the flap")
	}
	const lost = 5
	for i := range lost {
		env.pf.Deliver(env.frame(i, true))
	}
	var out [][]byte
	for i := range 3 {
		out = append(out, env.frame(i, false))
	}
	if got := env.send(t, out); len(got) != 0 {
		t.Errorf("the wire carried %d frames while the link was down", len(got))
	}
	if n := env.rxq.Harvest(make([]ring.RxDone, 8)); n != 0 {
		t.Errorf("harvested %d frames that arrived while the link was down", n)
	}
	c := env.pf.Counters()
	if rx, tx := c.RxNotReady-before.RxNotReady, c.TxNoLink-before.TxNoLink; rx != lost || tx != uint64(len(out)) {
		t.Errorf("counted %d RX and %d TX frames lost to the link, want %d and %d", rx, tx, lost, len(out))
	}

	stepUntil(t, env.pf, "link back up", func() bool { return env.p.PollLink().Up })
	env.flows(t, 10)
	want := []Link{{true, 10000}, {false, 0}, {true, 10000}}
	if len(events) != len(want) || events[1] != want[1] || events[2] != want[2] {
		t.Errorf("link reports %v, want %v", events, want)
	}
}

// TestDelayedWriteBack: completions written back late are harvested and
// reclaimed late, in order and intact, with nothing lost, with descriptor
// and head write-back alike; the queues carry on once the delay is lifted.
func TestDelayedWriteBack(t *testing.T) {
	eachTxCompletion(t, func(t *testing.T, headWB bool) {
		env := newFaultEnv(t, Config{TxHeadWriteBack: headWB})
		const delay = 50
		env.pf.DelayWriteBack(delay)
		var in, out [][]byte
		for i := range 6 {
			in = append(in, env.frame(i, true))
			out = append(out, env.frame(i, false))
		}
		for _, f := range in {
			env.pf.Deliver(f)
		}
		var pkts []ring.TxPkt
		for i, f := range out {
			seg, _ := env.bufs.txSeg(t, f)
			pkts = append(pkts, ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: ring.Cookie(100 + i)})
		}
		if n := env.q.Submit(pkts); n != len(pkts) {
			t.Fatalf("Submit took %d packets", n)
		}
		// Everything moves at once; the driver learns of it only later.
		for range delay / 2 {
			env.pf.Step()
		}
		if got := env.rec.take(); len(got) != len(out) {
			t.Fatalf("the wire carried %d of %d frames: the delay should hold write-backs, not data", len(got), len(out))
		}
		if n := env.rxq.Harvest(make([]ring.RxDone, 8)); n != 0 {
			t.Fatalf("harvested %d frames before their write-back", n)
		}
		if n := env.q.Reclaim(make([]ring.Cookie, 8)); n != 0 {
			t.Fatalf("reclaimed %d packets before their write-back", n)
		}
		env.receive(t, in)
		for i, c := range reclaimN(t, env.pf, env.q, len(pkts)) {
			if c != pkts[i].Cookie {
				t.Errorf("reclaimed cookie %d, want %d", c, pkts[i].Cookie)
			}
		}
		env.pf.DelayWriteBack(0)
		env.flows(t, 20)
		c := env.pf.Counters()
		if c.RxDMAFault+c.TxDMAFault+c.RxNotReady+c.TxNoLink+c.RxQueueOff != 0 {
			t.Errorf("frames lost: %+v", c)
		}
	})
}

// TestInjectedDMAFaults: DMA faults the IOMMU raises on the data path drop
// the frame or packet they hit, counted as the hardware counts an unmapped
// IOVA; the queue keeps its buffers, every cookie comes back, and once the
// faults end traffic flows through the same queues again.
func TestInjectedDMAFaults(t *testing.T) {
	env := newFaultEnv(t, Config{})

	// RX: the next two accesses fault (each a descriptor fetch): two
	// frames dropped, the rest received in order into the same buffers.
	env.pf.FailDMA(2)
	var in [][]byte
	for i := range 6 {
		in = append(in, env.frame(i, true))
		env.pf.Deliver(in[i])
	}
	env.receive(t, in[2:])
	if c := env.pf.Counters(); c.RxDMAFault != 2 || c.InjectedFaults != 2 {
		t.Errorf("RX: %d frames dropped on DMA faults, %d faults injected; want 2 and 2", c.RxDMAFault, c.InjectedFaults)
	}

	// TX: one packet's buffer faults: that packet is dropped and counted,
	// its cookie still comes back, the others go out.
	var out [][]byte
	for i := range 4 {
		out = append(out, env.frame(i, false))
	}
	var pkts []ring.TxPkt
	var bad ring.Segment
	for i, f := range out {
		seg, _ := env.bufs.txSeg(t, f)
		if i == 1 {
			bad = seg
		}
		pkts = append(pkts, ring.TxPkt{Segs: []ring.Segment{seg}, Cookie: ring.Cookie(200 + i)})
	}
	env.pf.FailDMARange(bad.IOVA, uint64(bad.Len))
	if n := env.q.Submit(pkts); n != len(pkts) {
		t.Fatalf("Submit took %d packets", n)
	}
	if got := reclaimN(t, env.pf, env.q, len(pkts)); len(got) != len(pkts) {
		t.Fatalf("reclaimed %d of %d cookies", len(got), len(pkts))
	}
	wire := env.rec.take()
	c := env.pf.Counters()
	if len(wire) != len(out)-1 || c.TxDMAFault != 1 {
		t.Errorf("TX: %d frames on the wire, %d dropped on DMA faults; want %d and 1", len(wire), c.TxDMAFault, len(out)-1)
	}
	for i, want := range [][]byte{out[0], out[2], out[3]} {
		if i < len(wire) && !bytes.Equal(wire[i], want) {
			t.Errorf("frame %d on the wire is not the packet submitted", i)
		}
	}
	env.pf.ClearDMAFailures()
	env.flows(t, 30)
	if c := env.pf.Counters(); c.IOMMUFaults != c.InjectedFaults || c.InjectedFaults != 3 {
		t.Errorf("%d IOMMU faults, %d injected; want 3, all injected", c.IOMMUFaults, c.InjectedFaults)
	}
}
