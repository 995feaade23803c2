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
		decodeRx(&done[n], st, q.ring.load0(next), q.cookies[next&q.mask])
		next++
		avail--
		n++
	}
	q.next = next
	return n
}

// decodeRx turns an advanced write-back descriptor into a ring.RxDone. It
// is written without branches where it can be: it runs once per packet.
func decodeRx(d *ring.RxDone, st, info uint64, c ring.Cookie) {
	if st&rxStatEOP == 0 {
		// Before the last descriptor of a frame only the length is
		// meaningful (datasheet 7.1.6.2).
		*d = ring.RxDone{}
		d.Cookie = c
		d.Len = uint32(st>>rxLenShift) & 0xFFFF
		return
	}
	rssType := uint8(info & rxRSSTypeMask)
	hash := uint32(info >> rxRSSHashShift)
	if rssType == 0 {
		hash = 0 // without RSS, dword 1 holds the IP ID and fragment checksum
	}
	vp := uint16(st>>3) & 1
	// Verdicts: 0 unknown (not checked), 1 good, 2 bad, matching
	// ring.CsumUnknown/Good/Bad.
	ipChecked := uint8(st>>6) & 1
	l4Checked := uint8(st>>5|st>>4) & 1
	// Field by field, not as one composite literal: the compiler would
	// build the literal on the stack with narrow stores and copy it with
	// wide loads, which stalls store-to-load forwarding on every packet.
	d.Cookie = c
	d.Len = uint32(st>>rxLenShift) & 0xFFFF
	d.EOP = true
	d.RSSHash = hash
	d.RSSType = rssType
	d.PacketType = packetType(uint32(info>>rxPTypeShift) & rxPTMask)
	d.VLAN = uint16(st>>rxVLANShift) * vp
	d.VLANStripped = vp != 0
	d.IPCsum = ring.CsumStatus(ipChecked + ipChecked&uint8(st>>31))
	d.L4Csum = ring.CsumStatus(l4Checked + l4Checked&uint8(st>>30))
	d.RxError = st&rxErrRXE != 0
}

// ptypeFlags maps the seven L3/L4 bits of the packet type to ring.PT*
// flags.
var ptypeFlags = func() (t [128]uint16) {
	for i := range t {
		var f uint16
		if i&(rxPTIPv4|rxPTIPv4Ext) != 0 {
			f |= ring.PTIPv4
		}
		if i&(rxPTIPv6|rxPTIPv6Ext) != 0 {
			f |= ring.PTIPv6
		}
		if i&rxPTTCP != 0 {
			f |= ring.PTTCP
		}
		if i&rxPTUDP != 0 {
			f |= ring.PTUDP
		}
		if i&rxPTSCTP != 0 {
			f |= ring.PTSCTP
		}
		t[i] = f
	}
	return t
}()

// packetType maps the 82599's packet-type field to ring.PT* flags.
func packetType(pt uint32) uint16 {
	if pt&rxPTEtqf != 0 {
		return 0 // an EtherType-filter match: the low bits are a filter index
	}
	return ptypeFlags[pt&127]
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
