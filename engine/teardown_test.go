package engine

import (
	"sync/atomic"
	"testing"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// inFlightNIC is a NIC queue pair that, asked to stop a queue, first lets
// the simulated 82599 run one pass: frames already in its receive FIFO are
// written into posted buffers and submitted packets are read, as silicon
// goes on DMAing until it confirms the queue disabled. Whoever unmaps
// memory before the stop has returned then sees the DMA fault. It can
// also make the channel's next harvest (one) panic, standing in for a bug
// that kills a poll round.
type inFlightNIC struct {
	ring.QueuePair
	pf        atomic.Pointer[sim.PF] // nil until the rig is up
	panicking atomic.Bool
}

func (n *inFlightNIC) StopRx() error {
	n.finishDMA()
	return n.QueuePair.StopRx()
}

func (n *inFlightNIC) StopTx() error {
	n.finishDMA()
	return n.QueuePair.StopTx()
}

func (n *inFlightNIC) finishDMA() {
	if pf := n.pf.Load(); pf != nil {
		pf.Step()
	}
}

func (n *inFlightNIC) Rx() ring.RxQueue { return panickyRx{n.QueuePair.Rx(), n} }

type panickyRx struct {
	ring.RxQueue
	n *inFlightNIC
}

func (q panickyRx) Harvest(done []ring.RxDone) int {
	if q.n.panicking.CompareAndSwap(true, false) {
		panic("test: a bug in the poll round")
	}
	return q.RxQueue.Harvest(done)
}

// TestGuestLeavesAfterPortFailedNICStopsBeforeUnmap: a poll round panics
// (the lcore would stop) while the NIC holds the guest's receive buffers
// and transmit packets, with frames on their way in. The failed channel no
// longer stops its queues when the ring hook asks, so when the guest then
// leaves it is GuestDMA.UnmapRegion that must stop them, and only then
// unmap the memory: the NIC finishing its DMA in between must land in
// mapped guest memory, and nothing of the guest may be left on the NIC.
func TestGuestLeavesAfterPortFailedNICStopsBeforeUnmap(t *testing.T) {
	nic := &inFlightNIC{}
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, channel: ChannelConfig{TxCompleteBatch: 64},
		nic: func(n ring.QueuePair) ring.QueuePair { nic.QueuePair = n; return nic }})
	nic.pf.Store(r.pf)
	r.postRx(t, 64)
	r.gen.Emit(8)
	checkIntact(t, r.receive(t, 8), r.input.take())
	for _, f := range testFrames(10, 300) {
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	r.channel.Poll() // RX buffers reposted, TX packets submitted, none sent
	r.gen.Emit(4)    // in the NIC's FIFO, not yet written
	nic.panicking.Store(true)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the poll round did not panic: the test exercises nothing")
			}
		}()
		r.channel.Poll()
	}()
	if r.channel.Err() == nil {
		t.Fatal("the channel does not report the panicked round")
	}
	r.dev.LockDataPath()
	rxPosted, txOnNIC := r.channel.rx.posted, r.channel.tx.zcHeads
	r.dev.UnlockDataPath()
	if rxPosted == 0 || txOnNIC == 0 {
		t.Fatalf("the NIC holds %d RX buffers and %d TX packets of the guest: nothing for the unmap to wait for", rxPosted, txOnNIC)
	}

	r.g.Close()
	r.g = nil
	if err := waitSessionOver(r); err != nil {
		t.Fatal(err)
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("the NIC's DMA while its queues stopped faulted %d times (IOVA %#x): guest memory was unmapped before the NIC let go of it", c.IOMMUFaults, c.LastFaultIOVA)
	}
	r.dev.LockDataPath()
	rxPosted, txOnNIC = r.channel.rx.posted, r.channel.tx.zcHeads
	r.dev.UnlockDataPath()
	if rxPosted != 0 || txOnNIC != 0 {
		t.Fatalf("guest memory unmapped while the NIC still holds %d of its RX buffers and %d TX packets", rxPosted, txOnNIC)
	}
	// The queues stay stopped: frames arriving now are the NIC's to drop.
	r.gen.Emit(8)
	for range 4 {
		r.pf.Step()
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("the NIC DMAed into unmapped guest memory %d times (IOVA %#x) after the guest left", c.IOMMUFaults, c.LastFaultIOVA)
	}
}
