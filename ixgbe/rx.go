package ixgbe

import (
	"errors"
	"fmt"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vfio"
)

// ErrQueueRunning is returned by Drain on a queue the device may still use.
var ErrQueueRunning = errors.New("ixgbe: queue still enabled; call Port.Stop first")

// RxQueue is one receive queue. It implements ring.RxQueue. A queue has a
// single owner: Post, Harvest and Drain must not be called concurrently.
//
// Ring protocol (datasheet 7.1.9): the device owns the descriptors from RDH
// up to RDT-1 and stops one short of the tail, so at most size-1 buffers
// are posted at once. Post fills descriptors at the tail and moves RDT
// once per call; Harvest reads completed descriptors from the oldest
// posted one on, in ring order.
type RxQueue struct {
	ring    descRing
	bar     vfio.BAR
	tailReg uint32
	mask    uint32
	next    uint32 // free-running index of the oldest posted descriptor
	tail    uint32 // free-running index of the next descriptor to post
	// bufSize is what SRRCTL.BSIZEPACKET says each buffer holds; minBuf
	// is the shortest buffer Post accepts: bufSize, or the longest frame
	// the port writes if that is less (see Port.MaxRxWrite).
	bufSize uint32
	minBuf  uint32
	cookies []ring.Cookie // cookie of the buffer posted at each slot

	index    int
	size     int
	ringIOVA uint64
	stopped  bool
	vme      bool // strip VLAN tags (RXDCTL.VME) even without Config.VLANStrip: its pool has a VLAN
	released bool // the port is closed: the ring memory is gone
}

var _ ring.RxQueue = (*RxQueue)(nil)

func newRxQueue(bar vfio.BAR, index int, mem []byte, iova uint64, size, bufSize, maxWrite int) (*RxQueue, error) {
	r, err := newDescRing(mem, size)
	if err != nil {
		return nil, fmt.Errorf("RX queue %d: %w", index, err)
	}
	return &RxQueue{
		ring:     r,
		bar:      bar,
		tailReg:  rxQueueReg(index, rxqRDT),
		mask:     uint32(size - 1),
		bufSize:  uint32(bufSize),
		minBuf:   uint32(min(bufSize, maxWrite)),
		cookies:  make([]ring.Cookie, size),
		index:    index,
		size:     size,
		ringIOVA: iova,
	}, nil
}

// Index is the queue's number on its port.
func (q *RxQueue) Index() int { return q.index }

// Size is the number of descriptors in the ring; at most Size()-1 buffers
// are posted at once.
func (q *RxQueue) Size() int { return q.size }

// Posted is the number of buffers the device holds (posted, not yet
// harvested).
func (q *RxQueue) Posted() int { return int(q.tail - q.next) }

// Post hands bufs to the device in order and returns how many it took:
// fewer when the ring is full. Every buffer must be at least MinBufLen
// long (the device writes up to that many bytes into it, whatever Len
// says); a shorter one stops the batch there. One tail write per call.
func (q *RxQueue) Post(bufs []ring.Buf) int {
	free := q.mask - (q.tail - q.next)
	n := uint32(len(bufs))
	if n > free {
		n = free
	}
	if n == 0 || q.stopped {
		return 0
	}
	tail := q.tail
	for i := range bufs[:n] {
		b := &bufs[i]
		if b.Len < q.minBuf {
			n = uint32(i)
			break
		}
		// Header address 0 also clears DD from the last write-back.
		q.ring.store(tail, b.IOVA, 0)
		q.cookies[tail&q.mask] = b.Cookie
		tail++
	}
	if n == 0 {
		return 0
	}
	q.tail = tail
	q.bar.Write32(q.tailReg, tail&q.mask)
	return int(n)
}

// Harvest fills done with completed buffers in ring order and returns how
// many. A frame that spans several buffers completes as several entries,
// EOP set on the last; the frame-level fields are valid on that one. On a
// stopped queue it returns what the device completed before it stopped,
// so the owner can tell frames from empty buffers before it Drains the
// rest; after the port's Close it returns nothing.
func (q *RxQueue) Harvest(done []ring.RxDone) int {
	if q.released {
		return 0 // the ring memory is gone; Drain returns the rest
	}
	next := q.next
	avail := q.tail - next
	n := 0
	for n < len(done) && avail > 0 {
		st := q.ring.load1(next)
		if st&rxStatDD == 0 {
			break
		}
		// DD was read first; the rest of the write-back is complete.
		decodeRx(&done[n], st, q.cookies[next&q.mask])
		next++
		avail--
		n++
	}
	q.next = next
	return n
}

// decodeRx turns an advanced write-back descriptor's status quad word into
// a ring.RxDone. It runs once per packet: the frame-level bits come from
// one table lookup, and each field is stored on its own (a composite
// literal would be built on the stack with narrow stores and copied with
// wide loads, which stalls store-to-load forwarding on every packet).
func decodeRx(d *ring.RxDone, st uint64, c ring.Cookie) {
	d.Cookie = c
	d.Len = uint32(st>>rxLenShift) & 0xFFFF
	if st&rxStatEOP == 0 {
		// Before the last descriptor of a frame only the length is
		// meaningful (datasheet 7.1.6.2).
		d.Flags, d.VLAN = 0, 0
		return
	}
	d.Flags = rxFlags[st>>3&0xF|st>>(rxErrShift-4)&0x70]
	d.VLAN = uint16(st>>rxVLANShift) * (uint16(st>>3) & 1)
}

// rxFlags maps seven status and error bits of an EOP write-back to
// ring.RxFlags: VP, UDPCS, L4CS and IPCS (status bits 3-6) in bits 0-3 of
// the index, RXE, L4E and IPE (bits 29-31) in bits 4-6.
var rxFlags = func() (t [128]ring.RxFlags) {
	for i := range t {
		st := uint64(i&0xF)<<3 | uint64(i>>4)<<rxErrShift
		f := ring.RxFlagEOP
		if st&rxStatVP != 0 {
			f |= ring.RxFlagVLANStripped
		}
		if st&rxErrRXE != 0 {
			f |= ring.RxFlagError
		}
		// Verdicts: unknown when the NIC did not check, else good or bad.
		ip, l4 := ring.CsumUnknown, ring.CsumUnknown
		if st&rxStatIPCS != 0 {
			ip = verdict(st&rxErrIPE != 0)
		}
		if st&(rxStatL4CS|rxStatUDPCS) != 0 {
			l4 = verdict(st&rxErrL4E != 0)
		}
		t[i] = f | ring.RxVerdicts(ip, l4)
	}
	return t
}()

func verdict(bad bool) ring.CsumStatus {
	if bad {
		return ring.CsumBad
	}
	return ring.CsumGood
}

// Drain appends to dst the cookies of every buffer still posted (not yet
// harvested), oldest first, and forgets them. It is for shutdown: the
// queue must have been stopped (Port.Stop), or the device could still
// write into the buffers being handed back.
func (q *RxQueue) Drain(dst []ring.Cookie) ([]ring.Cookie, error) {
	if !q.stopped {
		return dst, ErrQueueRunning
	}
	for ; q.next != q.tail; q.next++ {
		dst = append(dst, q.cookies[q.next&q.mask])
	}
	return dst, nil
}
