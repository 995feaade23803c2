//go:build linux

package wire

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// TAP is a Linux TAP network interface: frames the kernel's network stack
// sends out of the interface are read and delivered to the attached
// Endpoint, and frames delivered to the TAP are handed to the kernel as if
// they had arrived on the interface. Connected to a simulated NIC port, it
// lets ping, sockets and tcpdump talk to the model.
//
// The interface is created without packet information (IFF_NO_PI), so
// every read and write is exactly one Ethernet frame without FCS. Bring it up
// and address it with iproute2, e.g. `ip link set tap0 up`.
type TAP struct {
	f    *os.File
	name string

	peer atomic.Pointer[endpointBox]

	mu         sync.Mutex
	readerDone chan struct{} // nil until the first Attach

	rxFrames, rxBytes, rxErrors, rxDropped, rxPadded atomic.Uint64
	txFrames, txBytes, txErrors                      atomic.Uint64
}

// TAPStats counts a TAP's traffic. Rx is from the kernel towards the
// attached endpoint, Tx is from Deliver into the kernel.
type TAPStats struct {
	RxFrames, RxBytes, RxErrors uint64
	RxDropped                   uint64 // read while no peer was attached
	// RxPadded counts frames the kernel wrote shorter than the Ethernet
	// minimum, which the reader padded (also in RxFrames; RxBytes counts
	// the padded length, as the wire carries it).
	RxPadded                    uint64
	TxFrames, TxBytes, TxErrors uint64
}

// tapReadBuf is the read buffer size: the largest frame a TAP hands out is
// its MTU plus the Ethernet header, at most 64 KiB.
const tapReadBuf = 65536

// minTAPFrame is the Ethernet minimum without FCS. The kernel writes short
// frames (a 42-byte ARP request, a 54-byte TCP RST) into a TAP as they are:
// a NIC driver or the MAC pads them on transmit, and a TAP has neither. A
// real port never receives a frame this short from a working link partner
// (the 82599 discards one as a runt, counted in RUC), so the TAP pads, as the
// partner's MAC would.
const minTAPFrame = MinFrameSize - FCSLen

// maxTAPReadFailures consecutive failed reads end the reader goroutine.
const maxTAPReadFailures = 100

// OpenTAP creates the TAP interface name (or attaches to an existing
// persistent one); with name "" the kernel picks a free tapN. The interface
// exists until Close. It needs CAP_NET_ADMIN.
func OpenTAP(name string) (*TAP, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("wire: TAP name %q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	// Non-blocking, so that os.File registers the descriptor with Go's
	// poller: reads park the goroutine instead of a thread, and Close
	// wakes a pending read.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("wire: opening /dev/net/tun (needs the tun module and root or CAP_NET_ADMIN): %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wire: TAP name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wire: creating TAP interface %q (TUNSETIFF; needs CAP_NET_ADMIN, and the name must not belong to a non-TAP interface): %w", name, err)
	}
	t := &TAP{name: ifr.Name(), f: os.NewFile(uintptr(fd), "/dev/net/tun")}
	return t, nil
}

// Name is the interface name the kernel gave the TAP.
func (t *TAP) Name() string { return t.name }

// Attach makes peer the receiver of every frame the kernel sends out of
// the interface; the first call starts the goroutine that reads them. Until
// then the kernel queues frames (and drops them once its queue is full).
// Attaching again replaces the peer; nil detaches it, and frames read are
// then dropped and counted as RxDropped. With Attach a TAP is a Port, so
// Connect(nicPort, tap) joins a simulated NIC to the kernel.
func (t *TAP) Attach(peer Endpoint) {
	if peer == nil {
		t.peer.Store(nil)
	} else {
		t.peer.Store(&endpointBox{peer})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.readerDone == nil {
		t.readerDone = make(chan struct{})
		go t.read(t.readerDone)
	}
}

func (t *TAP) read(done chan<- struct{}) {
	defer close(done)
	buf := make([]byte, tapReadBuf)
	failures := 0
	for {
		n, err := t.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// EBADFD: the interface was deleted under us. Anything else
			// is counted and retried, but a descriptor that only fails
			// is given up on rather than spun on.
			t.rxErrors.Add(1)
			if failures++; errors.Is(err, unix.EBADFD) || failures == maxTAPReadFailures {
				return
			}
			continue
		}
		failures = 0
		peer := t.peer.Load()
		if peer == nil {
			t.rxDropped.Add(1)
			continue
		}
		if n < minTAPFrame {
			n = padFrame(buf, n)
			t.rxPadded.Add(1)
		}
		t.rxFrames.Add(1)
		t.rxBytes.Add(uint64(n))
		peer.ep.Deliver(buf[:n])
	}
}

// padFrame zeroes buf[n:minTAPFrame] (the buffer still holds the previous
// frame's bytes there) and returns the padded length. 802.3 pads with zero
// octets; a frame's own length fields (IP total length, ARP's fixed size)
// tell the receiver where its data ends.
func padFrame(buf []byte, n int) int {
	clear(buf[n:minTAPFrame])
	return minTAPFrame
}

// Deliver implements Endpoint: the frame is received by the kernel on the
// TAP interface. Frames the kernel refuses (the interface is down, the frame
// is malformed or larger than the MTU allows) are counted as TxErrors.
func (t *TAP) Deliver(frame []byte) {
	if _, err := t.f.Write(frame); err != nil {
		t.txErrors.Add(1)
		return
	}
	t.txFrames.Add(1)
	t.txBytes.Add(uint64(len(frame)))
}

// Stats returns the TAP's counters.
func (t *TAP) Stats() TAPStats {
	return TAPStats{
		RxFrames: t.rxFrames.Load(), RxBytes: t.rxBytes.Load(), RxErrors: t.rxErrors.Load(), RxDropped: t.rxDropped.Load(),
		RxPadded: t.rxPadded.Load(),
		TxFrames: t.txFrames.Load(), TxBytes: t.txBytes.Load(), TxErrors: t.txErrors.Load(),
	}
}

// Close removes the interface (unless it was made persistent elsewhere) and
// waits for the reader goroutine to stop.
func (t *TAP) Close() error {
	err := t.f.Close()
	t.mu.Lock()
	done := t.readerDone
	t.mu.Unlock()
	if done != nil {
		<-done
	}
	if err != nil {
		return fmt.Errorf("wire: closing TAP %s: %w", t.name, err)
	}
	return nil
}
