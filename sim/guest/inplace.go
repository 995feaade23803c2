package guest

import (
	"errors"
	"fmt"

	"github.com/zcnet/zcnet/vhost"
)

// The burst API below is what a poll-mode guest driver (DPDK's virtio PMD,
// a busy-polling Linux NAPI loop) does per packet: look at a received
// frame where the device wrote it, queue frames for transmission without
// telling the device about each, and refill receive buffers in batches with
// one avail-index publication (and at most one kick) per batch. Unlike
// Receive, PostRx and Transmit it allocates nothing per frame, so a guest
// built on it forwards at a rate set by the back end, not by the Go heap.

// RxFrame is a received frame seen in place in guest memory.
type RxFrame struct {
	Hdr vhost.NetHeader
	// Frame is the frame after the virtio-net header. It aliases the
	// receive buffer, so it may be modified in place (a MAC swap), and it
	// stays valid until that buffer is posted again (PostRx, RefillRx):
	// refill only after the frame has been transmitted or copied.
	Frame []byte
	// Buffers is how many receive buffers the frame took (the header's
	// num_buffers with mergeable receive buffers, else 1); refill that
	// many.
	Buffers int
}

// ReceiveInPlace appends the frames the device delivered on pair's RX
// queue to dst, at most cap(dst)-len(dst) of them, and returns the
// extended slice. Buffers the device gave back empty are counted in
// EmptyRx and skipped. It allocates nothing unless a frame spans several
// receive buffers (then that frame is gathered into a new slice), or dst
// is full-length with no spare capacity (then nothing is received).
func (g *Guest) ReceiveInPlace(pair int, dst []RxFrame) ([]RxFrame, error) {
	q := g.queues[2*pair]
	hl := g.HdrLen()
	mergeable := g.Features&vhost.NetFMrgRxbuf != 0
	for len(dst) < cap(dst) {
		head, length, ok := q.ring.Used()
		if !ok {
			return dst, nil
		}
		data, err := g.rxData(q, head, length)
		if err != nil {
			return dst, err
		}
		if len(data) == 0 {
			g.EmptyRx++
			continue
		}
		if len(data) < hl {
			return dst, fmt.Errorf("guest: received %d bytes, shorter than the %d-byte virtio-net header", len(data), hl)
		}
		h, _ := vhost.DecodeNetHeader(data, hl)
		f := RxFrame{Hdr: h, Frame: data[hl:], Buffers: 1}
		if mergeable && h.NumBuffers > 1 {
			f.Buffers = int(h.NumBuffers)
			// A frame spread over several buffers is not contiguous in
			// guest memory; a real driver chains them as mbuf segments
			// or skb fragments. Gathering keeps the API one slice per
			// frame; the echo guest's buffers are large enough that
			// it never happens there.
			whole := append(make([]byte, 0, len(f.Frame)*f.Buffers), f.Frame...)
			for k := 1; k < f.Buffers; k++ {
				head, length, ok := q.ring.Used()
				if !ok {
					return dst, fmt.Errorf("guest: frame announced %d buffers, only %d used", f.Buffers, k)
				}
				more, err := g.rxData(q, head, length)
				if err != nil {
					return dst, err
				}
				whole = append(whole, more...)
			}
			f.Frame = whole
		}
		dst = append(dst, f)
	}
	return dst, nil
}

// RefillRx makes up to n receive buffers available again on pair's RX
// queue, as PostRx does, but without allocating, and publishes them with
// one avail-index store and at most one kick. It returns ErrRingFull (with
// what fitted posted) when fewer than n buffers or descriptors were free.
func (g *Guest) RefillRx(pair, n int) error {
	i := 2 * pair
	q := g.queues[i]
	if parts := g.opt.RxChainDescs; parts > maxIndirect && !g.opt.RxHeaderApart {
		// The chain lives on the stack below; PostRx handles longer
		// ones (and allocates).
		return fmt.Errorf("guest: RefillRx handles receive chains of up to %d descriptors, not %d; use PostRx", maxIndirect, parts)
	}
	var chain [maxIndirect]Buf
	for range n {
		s, ok := q.takeSlot()
		if !ok {
			return g.publishAfter(i, ErrRingFull)
		}
		bufs := g.rxChain(q, s, chain[:0])
		head, err := q.ring.Add(bufs, false)
		if err != nil {
			q.freeSlots = append(q.freeSlots, s)
			return g.publishAfter(i, err)
		}
		q.slotOf.set(head, s)
	}
	return g.publish(i)
}

// publishAfter publishes what was added to ring i before err stopped a
// refill, and returns err (joined with a failed kick, if any).
func (g *Guest) publishAfter(i int, err error) error {
	if perr := g.publish(i); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// QueueTx copies frame behind hdr into a free transmit buffer of pair's TX
// queue and adds it to the ring without publishing it: FlushTx makes the
// queued frames visible to the device at once. It takes back buffers the
// device has finished with only when none is free, and allocates nothing.
// It returns ErrRingFull when no buffer or descriptor is free even then.
func (g *Guest) QueueTx(pair int, hdr vhost.NetHeader, frame []byte) error {
	q := g.queues[2*pair+1]
	hl := g.HdrLen()
	if hl+len(frame) > q.bufSize {
		return fmt.Errorf("guest: frame of %d bytes too big for a %d-byte TX buffer", len(frame), q.bufSize)
	}
	s, ok := q.takeSlot()
	if !ok {
		g.reclaim(q)
		if s, ok = q.takeSlot(); !ok {
			return ErrRingFull
		}
	}
	gpa := q.slotGPA(s)
	b := g.Mem.Bytes(gpa, uint64(hl+len(frame)))
	if _, err := hdr.Encode(b, hl); err != nil {
		q.freeSlots = append(q.freeSlots, s)
		return err
	}
	copy(b[hl:], frame)
	var chain [3]Buf
	bufs := chain[:1]
	bufs[0] = Buf{GPA: gpa, Len: uint32(hl + len(frame))}
	if g.opt.TxSplit {
		half := len(frame) / 2
		bufs = chain[:3]
		bufs[0] = Buf{GPA: gpa, Len: uint32(hl)}
		bufs[1] = Buf{GPA: gpa + uint64(hl), Len: uint32(half)}
		bufs[2] = Buf{GPA: gpa + uint64(hl+half), Len: uint32(len(frame) - half)}
	}
	head, err := q.ring.Add(bufs, g.opt.TxIndirect)
	if errors.Is(err, ErrRingFull) {
		// A buffer was free but not enough descriptors (a split chain
		// takes three): take back what the device has used and retry.
		g.reclaim(q)
		head, err = q.ring.Add(bufs, g.opt.TxIndirect)
	}
	if err != nil {
		q.freeSlots = append(q.freeSlots, s)
		return err
	}
	q.slotOf.set(head, s)
	return nil
}

// FlushTx publishes the frames QueueTx added on pair's TX queue and kicks
// the device if it asked to be.
func (g *Guest) FlushTx(pair int) error { return g.publish(2*pair + 1) }
