package guest

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/zcnet/zcnet/internal/idlepoll"
	"github.com/zcnet/zcnet/vhost"
)

// Echo is a guest driven like testpmd's macswap mode (the built-in guest
// of `zcnet sim`, and the echoing guest of tests): a virtio-net front end
// over a real vhost-user socket, memory in a memfd. Every frame it receives goes back out
// of the same queue pair with source and destination MAC swapped, so the
// traffic generator's probes travel wire -> NIC -> guest -> NIC -> wire and
// reach the verifying sink.
//
// It is a test guest, not the data path, but it must not be the bottleneck
// of `zcnet bench`: it works as a poll-mode driver does, on the test
// guest's burst API. It swaps the MACs in place in the receive buffer,
// copies the frame once into a transmit buffer (the test guest keeps RX
// and TX buffers apart, as a virtio driver with separate RX and TX pools
// does), publishes each burst's transmissions and receive refills with one
// avail-index store each, and allocates nothing per frame.
type Echo struct {
	g     *Guest
	burst []RxFrame
	stop  chan struct{}
	done  chan struct{}

	closeOnce sync.Once
	closeErr  error

	// own, if checkOwn, is the guest's MAC (StartEchoAs): a unicast frame
	// to another address is counted misdelivered and not echoed.
	own      [6]byte
	checkOwn bool

	rx, tx, dropped, broadcast, misdelivered atomic.Uint64
}

// EchoOptions: 4 KiB receive buffers, so that the NIC's 2 KiB buffers
// fit behind the virtio-net header and frames are received zero-copy.
var EchoOptions = Options{RxBufSize: 4096, TxBufSize: 2048, QueueSize: 4096}

// echoBurst is the most frames the guest takes per round: testpmd's
// default burst.
const echoBurst = 32

// StartEcho connects to the vhost-user socket at path with EchoOptions,
// posts every receive buffer and starts echoing.
func StartEcho(path string) (*Echo, error) {
	g, err := Dial(path, EchoOptions)
	if err != nil {
		return nil, err
	}
	return RunEcho(g)
}

// StartEchoAs is StartEcho for a guest whose MAC is mac (a NIC port
// serving several guests steers each frame to the guest its destination
// belongs to): every unicast frame received for another address is
// counted by Misdelivered and not echoed, as a guest's own filter would
// drop it. Group-addressed frames (broadcast, multicast) are for every
// guest and echoed as StartEcho's are.
func StartEchoAs(path string, mac [6]byte) (*Echo, error) {
	g, err := Dial(path, EchoOptions)
	if err != nil {
		return nil, err
	}
	return RunEchoAs(g, mac)
}

// RunEcho starts echoing on a connected guest (made with EchoOptions or
// alike); it owns g from now on.
func RunEcho(g *Guest) (*Echo, error) { return runEcho(g, nil) }

// RunEchoAs is RunEcho with StartEchoAs's check of the destination
// against mac.
func RunEchoAs(g *Guest, mac [6]byte) (*Echo, error) { return runEcho(g, &mac) }

func runEcho(g *Guest, own *[6]byte) (*Echo, error) {
	if err := g.RefillRx(0, int(g.queues[0].ring.Size())); err != nil && !errors.Is(err, ErrRingFull) {
		g.Close()
		return nil, err
	}
	e := &Echo{g: g, burst: make([]RxFrame, 0, echoBurst), stop: make(chan struct{}), done: make(chan struct{})}
	if own != nil {
		e.own, e.checkOwn = *own, true
	}
	go e.loop()
	return e, nil
}

// loop polls the guest's rings, as a poll-mode guest driver does: the back
// end never needs to signal it.
func (e *Echo) loop() {
	defer close(e.done)
	idlepoll.Run(e.stop, e.round)
}

// round echoes what arrived since the last round and refills the receive
// buffers used; it returns the number of frames received.
func (e *Echo) round() int {
	frames, err := e.g.ReceiveInPlace(0, e.burst[:0])
	if err != nil {
		// The device wrote something the guest cannot parse: a real
		// guest would reset the device; the demo counts and carries on.
		e.dropped.Add(1)
	}
	used, sent, bcast, misdelivered := 0, 0, 0, 0
	for i := range frames {
		used += frames[i].Buffers
		f := frames[i].Frame
		if len(f) >= 6 {
			switch {
			case [6]byte(f[:6]) == broadcastMAC:
				bcast++
			case e.checkOwn && f[0]&1 == 0 && [6]byte(f[:6]) != e.own:
				misdelivered++ // another guest's frame: not ours to echo
				continue
			}
		}
		macSwap(f)
		if e.queue(f) {
			sent++
		}
	}
	if len(frames) == 0 {
		return 0
	}
	// Counted before the echoes are published: whoever sees an echo on
	// the wire must find its frame counted as received.
	e.rx.Add(uint64(len(frames)))
	e.tx.Add(uint64(sent))
	e.dropped.Add(uint64(len(frames) - sent - misdelivered))
	e.broadcast.Add(uint64(bcast))
	e.misdelivered.Add(uint64(misdelivered))
	// The frames live in the receive buffers: publish the copies first,
	// then hand the buffers back.
	if err := e.g.FlushTx(0); err != nil {
		e.dropped.Add(1)
	}
	if err := e.g.RefillRx(0, used); err != nil {
		e.dropped.Add(1)
	}
	return len(frames)
}

// broadcastMAC is the broadcast address.
var broadcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// queue adds f to the TX ring; when the ring is full it publishes what is
// queued and waits briefly for the back end to complete earlier frames.
func (e *Echo) queue(f []byte) bool {
	for range 1000 {
		err := e.g.QueueTx(0, vhost.NetHeader{}, f)
		if err == nil {
			return true
		}
		if !errors.Is(err, ErrRingFull) {
			return false
		}
		if e.g.FlushTx(0) != nil {
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

// Received, Sent and Dropped count the frames the guest received, echoed
// and could not echo (or could not parse).
func (e *Echo) Received() uint64 { return e.rx.Load() }
func (e *Echo) Sent() uint64     { return e.tx.Load() }
func (e *Echo) Dropped() uint64  { return e.dropped.Load() }

// Broadcasts counts the received frames addressed to ff:ff:ff:ff:ff:ff
// (also in Received; echoed like any other, with the broadcast address
// as their source).
func (e *Echo) Broadcasts() uint64 { return e.broadcast.Load() }

// Misdelivered counts the unicast frames received for an address not the
// guest's own (StartEchoAs, RunEchoAs; always 0 otherwise): frames the
// NIC steered to the wrong guest. They are in Received, not echoed and
// not in Dropped.
func (e *Echo) Misdelivered() uint64 { return e.misdelivered.Load() }

// MAC is the guest's own address and whether Echo checks destinations
// against it.
func (e *Echo) MAC() ([6]byte, bool) { return e.own, e.checkOwn }

// Guest is the echoing guest (for tests that disturb it).
func (e *Echo) Guest() *Guest { return e.g }

// Close stops echoing and disconnects from the back end. Calls after the
// first return the first one's result.
func (e *Echo) Close() error {
	e.closeOnce.Do(func() {
		close(e.stop)
		<-e.done
		e.closeErr = e.g.Close()
	})
	return e.closeErr
}
