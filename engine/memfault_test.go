package engine

import (
	"testing"

	"github.com/zcnet/zcnet/internal/testwait"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// flow drives traffic both ways through a rig whose channel runs on a started
// lcore, against a free-running simulator: the generator's frames to the
// guest and the guest's frames to the wire, a few in flight at a time so a
// descheduled poller delays the test rather than making the NIC drop. It
// returns once the guest has received n frames and the wire has n of the
// guest's, checking both are intact and in order.
func (r *rig) flow(t *testing.T, n int) {
	t.Helper()
	var got []guest.Packet
	var onWire [][]byte
	tx := testFrames(n, 300)
	emitted, sent := 0, 0
	testwait.For(t, "traffic both ways", func() bool {
		if emitted < n && emitted-len(got) < 16 {
			r.gen.Emit(8)
			emitted += 8
		}
		pk, err := r.g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pk...)
		if free := r.g.Ring(0).Free(); free > 0 {
			_ = r.g.PostRx(0, free)
		}
		r.g.ReclaimTx(0)
		for sent < n && r.g.Transmit(0, vhost.NetHeader{}, tx[sent]) == nil {
			sent++
		}
		onWire = append(onWire, r.wire.take()...)
		return len(got) >= n && len(onWire) >= n
	})
	checkIntact(t, got[:n], r.input.take()[:n])
	sameFrames(t, onWire[:n], tx)
}

// TestGuestMemoryTruncatedMidTraffic: two guests share an lcore; one of
// them truncates its memory (an unsealed hugetlbfs memfd, which no seal
// protects) while traffic flows both ways. Its next access faults. Only
// its session may end: the process lives, the lcore keeps running, the
// other guest's traffic goes on intact and zero-copy, the faulting channel
// gives every host buffer back, and the same guest is served again once
// it reconnects with new memory.
func TestGuestMemoryTruncatedMidTraffic(t *testing.T) {
	for _, c := range []struct {
		name string
		copy bool
	}{{"zero-copy", false}, {"copy", true}} {
		t.Run(c.name, func(t *testing.T) { testGuestMemoryTruncated(t, c.copy) })
	}
}

// testGuestMemoryTruncated is TestGuestMemoryTruncatedMidTraffic with the
// hostile guest's channel copying (its frames in host buffers, which must all
// come home however the fault cut a round short) or not.
func testGuestMemoryTruncated(t *testing.T, copy bool) {
	good := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 2048}})
	bad := newRig(t, rigOptions{channel: ChannelConfig{ForceCopy: copy}, guest: guest.Options{RxBufSize: 2048,
		Memory: guest.MemoryOptions{Hugetlb: true, Unsealed: true}}})
	rigs := []*rig{good, bad}
	run := startOnOneLcore(t, rigs)
	for _, r := range rigs {
		testwait.For(t, "the channel to post the guest's buffers", func() bool { return r.rxHeld() > 0 })
		r.flow(t, 64)
	}

	// The hostile guest takes its memory away. From here on the test must
	// not touch that guest's memory either: it would fault in this process
	// too. Frames keep arriving for it and its transmit ring holds
	// buffers, so the channel's next round reads or writes the lost memory.
	if err := unix.Ftruncate(bad.g.Mem.FD(), 0); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the faulting channel to drop the hostile guest's session", func() bool {
		bad.gen.Emit(4)
		return bad.channel.Stats().GuestMemoryFaults > 0 && !bad.dev.Connected()
	})
	t.Logf("hostile guest's channel after the fault: %+v", bad.channel.Stats())
	if st := bad.channel.Stats(); st.GuestMemoryFaults != 1 {
		t.Fatalf("channel counted %d guest memory faults, want 1 (the channel must stop after the first)", st.GuestMemoryFaults)
	}
	select {
	case err := <-run.Failed():
		t.Fatalf("the lcore stopped: %v", err)
	default:
	}
	// The other guest never noticed.
	good.flow(t, 256)
	if st := good.channel.Stats(); st.RxCopied != 0 || st.TxCopied != 0 || st.GuestMemoryFaults != 0 {
		t.Fatalf("the well-behaved guest's channel: %+v", st)
	}
	// The faulting channel stopped its NIC queues and has every host buffer
	// back (frames the NIC held in them were dropped, counted).
	testwait.For(t, "the faulting channel's host buffers to come home", func() bool {
		bad.dev.LockDataPath()
		defer bad.dev.UnlockDataPath()
		return bad.channel.pool.Available() == bad.channel.pool.Cap()
	})

	// The same VM, restarted with new memory, is served again.
	if err := bad.g.Close(); err != nil {
		t.Logf("closing the hostile guest: %v", err)
	}
	var err error
	bad.g, err = guest.Dial(bad.path, guest.Options{RxBufSize: 2048})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.g.PostRx(0, 128); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the channel to serve the reconnected guest", func() bool { return bad.rxHeld() > 0 })
	bad.input.take()
	bad.wire.take()
	bad.flow(t, 64)
	if c := bad.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("simulator counted %d IOMMU faults", c.IOMMUFaults)
	}
}

// TestMemoryFaultOutsideGuestIsABug: a fault on memory that is not the
// guest's (here another front end's truncated memory) is not contained:
// it marks the channel failed and propagates, for the lcore to report as any
// other bug.
func TestMemoryFaultOutsideGuestIsABug(t *testing.T) {
	r := newRig(t, rigOptions{})
	other, err := guest.NewMemory(guest.MemoryOptions{Hugetlb: true, Unsealed: true})
	if err != nil {
		t.Fatalf("hugetlb memory (make hugepages reserves it): %v", err)
	}
	defer other.Close()
	gpa, err := other.Alloc(64, 64)
	if err != nil {
		t.Fatal(err)
	}
	b := other.Bytes(gpa, 64)
	if err := unix.Ftruncate(other.FD(), 0); err != nil {
		t.Fatal(err)
	}
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		r.dev.LockDataPath()
		defer r.dev.UnlockDataPath()
		r.channel.guarded(func(*Channel) int { b[0] = 1; return 0 })
	}()
	if panicked == nil {
		t.Fatal("a fault outside the guest's memory was swallowed")
	}
	if st := r.channel.Stats(); st.GuestMemoryFaults != 0 {
		t.Fatalf("counted as a guest memory fault: %+v", st)
	}
	if r.channel.Err() == nil {
		t.Fatal("the channel still claims to work after a panic in its code")
	}
}
