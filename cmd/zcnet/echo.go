package main

import (
	"errors"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// echoGuest is the built-in guest of `zcnet sim`: the test guest (a
// virtio-net front end over a real vhost-user socket, memory in a memfd)
// driven like testpmd's macswap mode. Every frame it receives goes back out
// of the same queue pair with source and destination MAC swapped, so the
// traffic generator's probes travel wire -> NIC -> guest -> NIC -> wire and
// reach the verifying sink.
//
// It is a test guest, not the data path: it copies each frame once (the
// test guest's Receive and Transmit copy), which is what a guest's own
// stack would do too.
type echoGuest struct {
	g    *guest.Guest
	stop chan struct{}
	done chan struct{}

	rx, tx, dropped atomic.Uint64
}

// echoGuestOptions: 4 KiB receive buffers, so that the NIC's 2 KiB buffers
// fit behind the virtio-net header and frames are received zero-copy.
var echoGuestOptions = guest.Options{RxBufSize: 4096, TxBufSize: 2048, QueueSize: 4096}

// startEchoGuest connects to the vhost-user socket at path, posts every
// receive buffer and starts echoing.
func startEchoGuest(path string) (*echoGuest, error) {
	g, err := guest.Dial(path, echoGuestOptions)
	if err != nil {
		return nil, err
	}
	return runEchoGuest(g)
}

// runEchoGuest starts echoing on a connected guest; it owns g from now on.
func runEchoGuest(g *guest.Guest) (*echoGuest, error) {
	if err := g.PostRx(0, int(echoGuestOptions.QueueSize)); err != nil && !errors.Is(err, guest.ErrRingFull) {
		g.Close()
		return nil, err
	}
	e := &echoGuest{g: g, stop: make(chan struct{}), done: make(chan struct{})}
	go e.loop()
	return e, nil
}

// loop polls the guest's rings, as a poll-mode guest driver does: the back
// end never needs to signal it.
func (e *echoGuest) loop() {
	defer close(e.done)
	idle := 0
	for {
		select {
		case <-e.stop:
			return
		default:
		}
		if e.round() > 0 {
			idle = 0
			continue
		}
		// Nothing to do: yield first, then back off to short sleeps so an
		// idle guest leaves the CPUs to the simulator and the lcores.
		idle++
		if idle < 256 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// round echoes what arrived since the last round and reposts the receive
// buffers used; it returns the number of frames received.
func (e *echoGuest) round() int {
	e.g.ReclaimTx(0)
	pkts, err := e.g.Receive(0)
	if err != nil {
		// The device wrote something the guest cannot parse: a real
		// guest would reset the device; the demo counts and carries on.
		e.dropped.Add(1)
	}
	used := 0
	for _, p := range pkts {
		used += max(1, int(p.Hdr.NumBuffers))
		macSwap(p.Frame)
		if e.transmit(p.Frame) {
			e.tx.Add(1)
		} else {
			e.dropped.Add(1)
		}
	}
	e.rx.Add(uint64(len(pkts)))
	if used > 0 {
		if err := e.g.PostRx(0, used); err != nil && !errors.Is(err, guest.ErrRingFull) {
			e.dropped.Add(1)
		}
	}
	return len(pkts)
}

// transmit queues f, waiting briefly for the back end to complete earlier
// frames when the TX ring is full.
func (e *echoGuest) transmit(f []byte) bool {
	for range 1000 {
		err := e.g.Transmit(0, vhost.NetHeader{}, f)
		if err == nil {
			return true
		}
		if !errors.Is(err, guest.ErrRingFull) {
			return false
		}
		runtime.Gosched()
	}
	return false
}

// macSwap exchanges the destination and source MAC addresses in place.
func macSwap(f []byte) {
	if len(f) < 12 {
		return
	}
	var dst [6]byte
	copy(dst[:], f[:6])
	copy(f[:6], f[6:12])
	copy(f[6:12], dst[:])
}

// close stops echoing and disconnects from the back end.
func (e *echoGuest) close() error {
	close(e.stop)
	<-e.done
	return e.g.Close()
}
