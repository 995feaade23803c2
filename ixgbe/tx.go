package ixgbe

import (
	"fmt"

	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vfio"
)

// TxQueue is one transmit queue. It implements ring.TxQueue. A queue has a
// single owner: Submit, Reclaim and Drain must not be called concurrently.
//
// Ring protocol (datasheet 7.2.3): TDH == TDT means empty; software fills
// descriptors from the tail and moves TDT once per Submit; the device
// walks TDH towards TDT. One slot always stays empty so a full ring is not
// mistaken for an empty one. Every packet's last descriptor carries RS, and
// the device reports it done either by setting DD in it or (head
// write-back) by writing TDH to memory.
//
// A packet occupies an optional context descriptor followed by one data
// descriptor per segment. Its cookie and the index of its last descriptor
// are kept at its first slot, so Reclaim never reads anything back from the
// ring but the completion status.
type TxQueue struct {
	ring    descRing
	bar     vfio.BAR
	tailReg uint32
	mask    uint32
	tail    uint32    // free-running index of the next free descriptor
	clean   uint32    // free-running index of the oldest unreclaimed packet's first descriptor
	pkts    []txSlot  // at each packet's first slot
	memo    txOffload // the offload plan of the last offloaded packet
	loaded  [2]uint64 // offload key of the context in each slot, 0: none
	headWB  bool
	head    dmaWord

	index    int
	size     int
	ringIOVA uint64
	headIOVA uint64
	stopped  bool
	released bool // the port is closed: the ring memory is gone
}

var _ ring.TxQueue = (*TxQueue)(nil)

// txSlot is what the queue remembers about a packet, at its first slot.
type txSlot struct {
	cookie ring.Cookie
	last   uint32 // free-running index of the packet's last descriptor
}

// txOffload is how a packet's offload requests translate into a context
// descriptor and data-descriptor bits. Consecutive packets of one flow
// usually ask for the same offloads, so the last plan is kept and found
// again by its key.
type txOffload struct {
	key uint64
	// The context descriptor's words (slot index included).
	vlanMacIP, tucmd, mssL4Idx uint32
	slot                       uint32
	cmd, popts, hdrLen         uint32
}

// offloadKey packs every TxPkt field that shapes the context or the data
// descriptors into one word; it is never 0 for a packet with offloads.
func offloadKey(pk *ring.TxPkt) uint64 {
	var l4 uint64
	switch pk.L4Proto {
	case ring.L4TCP:
		l4 = 1
	case ring.L4UDP:
		l4 = 2
	case ring.L4SCTP:
		l4 = 3
	}
	var v6 uint64
	if pk.IPv6 {
		v6 = 1
	}
	return uint64(pk.Offload)&0xF | v6<<4 | l4<<5 |
		uint64(pk.L2Len&0x7F)<<7 | uint64(pk.L3Len&0x1FF)<<14 |
		uint64(pk.L4Len)<<23 | uint64(pk.MSS)<<31 | uint64(pk.VLAN)<<47
}

func newTxQueue(bar vfio.BAR, index int, mem []byte, iova uint64, size int) (*TxQueue, error) {
	r, err := newDescRing(mem, size)
	if err != nil {
		return nil, fmt.Errorf("TX queue %d: %w", index, err)
	}
	return &TxQueue{
		ring:     r,
		bar:      bar,
		tailReg:  txQueueReg(index, txqTDT),
		mask:     uint32(size - 1),
		pkts:     make([]txSlot, size),
		index:    index,
		size:     size,
		ringIOVA: iova,
	}, nil
}

// useHeadWriteBack makes the queue read completions from the word at mem,
// which the device reaches at iova.
func (q *TxQueue) useHeadWriteBack(mem []byte, iova uint64) {
	q.headWB = true
	q.head = newDMAWord(mem)
	q.head.store(0)
	q.headIOVA = iova
}

// Index is the queue's number on its port.
func (q *TxQueue) Index() int { return q.index }

// Size is the number of descriptors in the ring.
func (q *TxQueue) Size() int { return q.size }

// InFlight is the number of descriptors submitted and not yet reclaimed.
func (q *TxQueue) InFlight() int { return int(q.tail - q.clean) }

// Submit queues packets in order and returns how many it took: fewer when
// the ring lacks descriptors for the next one, or when the next one has no
// segment. One tail write per call.
//
// Offloads follow the 82599's rules (datasheet 7.2.5): for a TCP or UDP
// checksum the caller seeds the L4 checksum field with the pseudo-header
// checksum (for TSO: without the length), and for TSO sets the IPv4 total
// length/IPv6 payload length as for one segment or zero; the device fills
// in the rest for every frame it sends. Header lengths in the packet say
// where the headers end; the device does not parse them.
func (q *TxQueue) Submit(pkts []ring.TxPkt) int {
	if q.stopped {
		return 0
	}
	free := q.mask - (q.tail - q.clean)
	tail := q.tail
	n := 0
	for i := range pkts {
		pk := &pkts[i]
		segs := pk.Segs
		if len(segs) == 1 && pk.Offload == 0 {
			// The common case: one buffer, nothing to offload.
			if free == 0 {
				break
			}
			l := segs[0].Len
			q.ring.store(tail, segs[0].IOVA,
				uint64(l)<<(32+txdPaylenShft)|uint64(txdDTypData|txdCmdDEXT|txdCmdIFCS|txdCmdEOP|txdCmdRS|l&txdLenMask))
			q.pkts[tail&q.mask] = txSlot{pk.Cookie, tail}
			tail++
			free--
			n++
			continue
		}
		need := uint32(len(segs))
		if need == 0 {
			break
		}
		total := uint32(0)
		for j := range segs {
			total += segs[j].Len
		}
		cmd := uint32(txdDTypData | txdCmdDEXT | txdCmdIFCS)
		olinfo := total << txdPaylenShft
		loadCtx := false
		if pk.Offload != 0 {
			key := offloadKey(pk)
			if key != q.memo.key {
				q.memo = planOffload(pk, key)
			}
			m := &q.memo
			cmd |= m.cmd
			olinfo = (total-m.hdrLen)<<txdPaylenShft | m.popts | m.slot<<txdIdxShift | txdCC
			if q.loaded[m.slot] != key {
				loadCtx = true
				need++
			}
		}
		if need > free {
			break
		}
		first := tail
		if loadCtx {
			m := &q.memo
			q.ring.store(tail, uint64(m.vlanMacIP), uint64(m.mssL4Idx)<<32|uint64(m.tucmd))
			q.loaded[m.slot] = m.key
			tail++
		}
		lastSeg := len(segs) - 1
		for j := range segs {
			c := cmd | segs[j].Len&txdLenMask
			if j == lastSeg {
				c |= txdCmdEOP | txdCmdRS
			}
			q.ring.store(tail, segs[j].IOVA, uint64(olinfo)<<32|uint64(c))
			tail++
		}
		q.pkts[first&q.mask] = txSlot{pk.Cookie, tail - 1}
		free -= need
		n++
	}
	if n > 0 {
		q.tail = tail
		q.bar.Write32(q.tailReg, tail&q.mask)
	}
	return n
}

// planOffload works out the context descriptor a packet's offloads need,
// the context slot it goes in, the data descriptors' extra command bits and
// POPTS, and the header length PAYLEN excludes (TSO only).
func planOffload(pk *ring.TxPkt, key uint64) txOffload {
	m := txOffload{key: key, slot: ctxSlotCsum}
	m.vlanMacIP = uint32(pk.L3Len)&0x1FF | uint32(pk.L2Len)<<ctxMACLenShift
	m.tucmd = txdDTypCtx | txdCmdDEXT
	if !pk.IPv6 {
		m.tucmd |= ctxTUCmdIPv4
	}
	switch pk.L4Proto {
	case ring.L4TCP:
		m.tucmd |= ctxTUCmdL4TCP
	case ring.L4SCTP:
		m.tucmd |= ctxTUCmdL4SCTP
	default:
		m.tucmd |= ctxTUCmdL4UDP
	}
	if pk.Offload&ring.OffloadVLAN != 0 {
		m.vlanMacIP |= uint32(pk.VLAN) << ctxVLANShift
		m.cmd |= txdCmdVLE
	}
	if pk.Offload&ring.OffloadIPv4Csum != 0 && !pk.IPv6 {
		m.popts |= txdPoptsIXSM
	}
	if pk.Offload&ring.OffloadL4Csum != 0 && pk.L4Proto != ring.L4None {
		m.popts |= txdPoptsTXSM
	}
	if pk.Offload&ring.OffloadTSO != 0 {
		m.slot = ctxSlotTSO
		m.cmd |= txdCmdTSE
		m.popts |= txdPoptsTXSM
		if !pk.IPv6 {
			m.popts |= txdPoptsIXSM // every segment gets a new IPv4 header
		}
		m.mssL4Idx = uint32(pk.MSS)<<ctxMSSShift | uint32(pk.L4Len)<<ctxL4LenShift
		m.hdrLen = uint32(pk.L2Len) + uint32(pk.L3Len) + uint32(pk.L4Len)
	}
	m.mssL4Idx |= m.slot << ctxIdxShift
	return m
}

// Reclaim fills done with the cookies of packets the device has finished
// sending, oldest first, and returns how many. On a stopped queue it
// returns what the device finished before it stopped, so that the owner
// can tell packets sent from packets abandoned before it Drains the rest;
// after the port's Close it returns nothing.
func (q *TxQueue) Reclaim(done []ring.Cookie) int {
	if q.released {
		return 0 // the ring memory is gone; Drain returns the rest
	}
	clean := q.clean
	n := 0
	if q.headWB {
		// The device has finished every descriptor before its head; fewer
		// than size descriptors are in flight, so the distance from the
		// oldest one to the head (mod size) is how many are done.
		base := clean
		finished := (q.head.load() - base) & q.mask
		for n < len(done) && clean != q.tail {
			p := q.pkts[clean&q.mask]
			eop := p.last
			if eop-base >= finished {
				break
			}
			done[n] = p.cookie
			n++
			clean = eop + 1
		}
		q.clean = clean
		return n
	}
	for n < len(done) && clean != q.tail {
		p := q.pkts[clean&q.mask]
		eop := p.last
		if q.ring.loadHi1(eop)&txdStatDD == 0 {
			break
		}
		done[n] = p.cookie
		n++
		clean = eop + 1
	}
	q.clean = clean
	return n
}

// Drain appends to dst the cookies of every packet submitted and not yet
// reclaimed, sent or not, oldest first, and forgets them. It is for
// shutdown: the queue must have been stopped (Port.Stop) first.
func (q *TxQueue) Drain(dst []ring.Cookie) ([]ring.Cookie, error) {
	if !q.stopped {
		return dst, ErrQueueRunning
	}
	for q.clean != q.tail {
		p := q.pkts[q.clean&q.mask]
		dst = append(dst, p.cookie)
		q.clean = p.last + 1
	}
	return dst, nil
}
