package engine

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
)

// checkRxBooks balances the receive side of rig r: every frame the
// simulated 82599 received (GPRC) went into the channel's NIC queue (QPRC) or
// was dropped by the NIC (MPC, QPRDC), and every frame of the queue was
// harvested by the channel (it must hold none: call it once the queue has
// stopped or the channel has harvested everything) and then delivered,
// dropped under a frame cause, or is waiting in host buffers.
func checkRxBooks(t *testing.T, r *rig, what string) {
	t.Helper()
	for range 4 {
		r.pf.Step() // the NIC's FIFO empties: into the queue or dropped
	}
	n, st := r.nic.Stats(), r.channel.Stats()
	q := n.Queues[0]
	if c := r.pf.Counters(); c.RxDMAFault != 0 || c.IOMMUFaults != 0 {
		t.Fatalf("%s: %d receive DMA faults, %d IOMMU faults", what, c.RxDMAFault, c.IOMMUFaults)
	}
	if in := q.RxPackets + n.RxMissed + q.RxDropped; n.RxPackets != in {
		t.Fatalf("%s: the NIC received %d frames (GPRC); into the queue %d (QPRC) + missed %d + no descriptor %d = %d",
			what, n.RxPackets, q.RxPackets, n.RxMissed, q.RxDropped, in)
	}
	if st.RxHarvested != q.RxPackets {
		t.Fatalf("%s: the NIC put %d frames into the channel's queue, the channel harvested %d: %d with no counter (%+v)",
			what, q.RxPackets, st.RxHarvested, int64(q.RxPackets)-int64(st.RxHarvested), st)
	}
	if out := st.RxPackets + st.Drops.RxFrames() + st.RxPending; st.RxHarvested != out {
		t.Fatalf("%s: the channel harvested %d frames; delivered %d + dropped %d + pending %d = %d (%+v)",
			what, st.RxHarvested, st.RxPackets, st.Drops.RxFrames(), st.RxPending, out, st)
	}
}

// TestRxAccountedWhenPortStopsWithFullPendingQueue: a zero-copy guest
// stops posting receive buffers, so arriving frames wait in host buffers
// until the channel's queue of harvested frames is full and the NIC holds
// written host buffers the channel cannot harvest yet. Whatever then stops the
// channel's RX queue (the ring stopped, the guest breaking its ring with a
// garbage avail index, the guest going away), every frame the NIC received
// must be delivered or dropped under a counter: none may go back to the
// pool as an empty buffer. (The soak lost up to 32 frames per such stop:
// a burst of host buffers.)
func TestRxAccountedWhenPortStopsWithFullPendingQueue(t *testing.T) {
	for _, c := range []struct {
		name string
		stop func(t *testing.T, r *rig)
		// broken: the guest's error breaks its ring (GuestErrors).
		broken bool
	}{
		{name: "GET_VRING_BASE", stop: func(t *testing.T, r *rig) {
			if _, err := r.g.StopRing(0); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "garbage avail index", broken: true, stop: func(t *testing.T, r *rig) {
			ring := r.g.Ring(0)
			ring.PublishRaw(ring.AvailIdx() + ring.Size() + 1)
			r.step() // the refill pops: the ring breaks
			r.step() // the channel finds it broken and stops its RX queue
		}},
		{name: "guest gone", stop: func(t *testing.T, r *rig) {
			r.g.Close()
			r.g = nil
			if err := waitSessionOver(r); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
			r.postRx(t, 16)
			// The guest never takes what arrives nor posts more: after 16
			// frames zero-copy, the rest waits in host buffers.
			for range 60 {
				r.gen.Emit(8)
				r.step()
			}
			r.dev.LockDataPath()
			pending, room, posted := len(r.channel.rx.pending), cap(r.channel.rx.pending), r.channel.rx.posted
			r.dev.UnlockDataPath()
			if pending != room || posted == 0 {
				t.Fatalf("%d of %d harvested frames waiting, %d host buffers on the NIC: want the queue full, the NIC holding buffers", pending, room, posted)
			}
			st := r.channel.Stats()
			if st.RxPackets != 16 || st.RxPending != uint64(room) {
				t.Fatalf("want 16 frames delivered and %d pending: %+v", room, st)
			}
			if out := st.RxPackets + st.Drops.RxFrames() + st.RxPending; st.RxHarvested != out {
				t.Fatalf("while running: the channel harvested %d frames; delivered %d + dropped %d + pending %d = %d",
					st.RxHarvested, st.RxPackets, st.Drops.RxFrames(), st.RxPending, out)
			}
			errs := st.GuestErrors
			c.stop(t, r)
			r.dev.LockDataPath()
			running := r.channel.rxRunning
			r.dev.UnlockDataPath()
			if running {
				t.Fatal("the channel's RX queue still runs: the test stops nothing")
			}
			checkRxBooks(t, r, c.name)
			st = r.channel.Stats()
			if st.RxPending != 0 || st.Drops.RxQuiesce < uint64(room) {
				t.Fatalf("want the %d waiting frames and those on the NIC dropped as rx_quiesce: %+v", room, st)
			}
			if got := st.GuestErrors - errs; c.broken != (got == 1) || got > 1 {
				t.Fatalf("%d guest errors counted for the stop, want %v", got, c.broken)
			}
		})
	}
}

// TestStatsBalanceWhileRunning reads a channel's Stats from another
// goroutine while an lcore-like goroutine polls under traffic that goes
// zero-copy and, while the guest is slow to repost, through host buffers:
// every snapshot must balance (RxHarvested = delivered + frame drops +
// pending), which needs the counters of one publication read together.
func TestStatsBalanceWhileRunning(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
	stopPolling := r.pollFree(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	var reads, unbalanced atomic.Uint64
	var first atomic.Value
	go func() {
		defer wg.Done()
		for !stop.Load() {
			st := r.channel.Stats()
			reads.Add(1)
			if st.RxHarvested != st.RxPackets+st.Drops.RxFrames()+st.RxPending {
				if unbalanced.Add(1) == 1 {
					first.Store(st)
				}
			}
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	if err := r.g.PostRx(0, 128); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 200 || reads.Load() < 1000; round++ {
		r.gen.Emit(64)
		time.Sleep(100 * time.Microsecond)
		pk, err := r.g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		if round%8 != 0 { // now and then the guest lags a round
			if err := r.g.PostRx(0, len(pk)); err != nil {
				t.Fatal(err)
			}
		} else if err := r.g.PostRx(0, r.g.Ring(0).Free()); err != nil {
			t.Fatal(err)
		}
		if round > 5000 {
			t.Fatalf("only %d reads of the counters in %d rounds", reads.Load(), round)
		}
	}
	stop.Store(true)
	wg.Wait()
	stopPolling()
	if n := unbalanced.Load(); n != 0 {
		t.Fatalf("%d of %d snapshots did not balance, first: %+v", n, reads.Load(), first.Load())
	}
	if st := r.channel.Stats(); st.RxCopied == 0 || st.RxZeroCopy == 0 {
		t.Logf("frames copied %d, zero-copy %d: the test wants both", st.RxCopied, st.RxZeroCopy)
	}
}
