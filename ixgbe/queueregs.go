package ixgbe

import (
	"errors"
	"fmt"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vfio"
)

// What the PF and a VF share about their queues: the descriptor rings in
// one DMA-mapped region, and the per-queue register block (RDBAL, RDLEN,
// SRRCTL, RXDCTL, ... at the same offsets in a 0x40-byte block). They
// differ only in where each queue's block sits in their BAR: a
// queueLayout.

// queueLayout locates queue q's register reg in a function's BAR.
type queueLayout struct {
	rx, tx func(q int, reg uint32) uint32
}

var (
	pfQueues = queueLayout{rx: rxQueueReg, tx: txQueueReg}
	vfQueues = queueLayout{rx: vfRxQueueReg, tx: vfTxQueueReg}
)

// ringSpec is the queues a function's rings are allocated for.
type ringSpec struct {
	layout             queueLayout
	rxQueues, txQueues int
	rxSize, txSize     int
	rxBufSize          int
	maxRxWrite         int
	headWB             bool
	memory             hugepage.Options
}

// queueRings is the descriptor ring memory of a function, mapped for its
// device, and the queues over it.
type queueRings struct {
	region *hugepage.Region
	iova   uint64
	alloc  *hugepage.IOVAAllocator
	rx     []*RxQueue
	tx     []*TxQueue
}

// newQueueRings allocates one region for every descriptor ring plus a page of
// TX head write-back words, maps it for dma at an address from alloc and
// makes the queues. On error what was acquired is returned too, for free.
func newQueueRings(bar vfio.BAR, dma vfio.DMAMapper, alloc *hugepage.IOVAAllocator, s ringSpec) (*queueRings, error) {
	rs := &queueRings{alloc: alloc}
	ringBytes := func(n int) uint64 { return alignUp(uint64(n*descSize), hugepage.IOMMUPage) }
	size := uint64(s.rxQueues)*ringBytes(s.rxSize) + uint64(s.txQueues)*ringBytes(s.txSize)
	size += hugepage.IOMMUPage // head write-back words, 64 bytes per TX queue
	r, err := hugepage.Alloc(size, s.memory)
	if err != nil {
		return rs, fmt.Errorf("allocate %d bytes of descriptor ring memory: %w", size, err)
	}
	rs.region = r
	iova, err := alloc.Alloc(uint64(r.Len()), uint64(r.PageSize()))
	if err != nil {
		return rs, fmt.Errorf("reserve IOVA space for descriptor rings: %w", err)
	}
	rs.iova = iova
	if err := r.MapInto(dma, iova); err != nil {
		return rs, fmt.Errorf("map descriptor rings for DMA at IOVA %#x: %w", iova, err)
	}
	mem := r.Bytes()
	off := uint64(0)
	for i := range s.rxQueues {
		n := ringBytes(s.rxSize)
		q, err := newRxQueue(bar, i, mem[off:off+n], iova+off, s.rxSize, s.rxBufSize, s.maxRxWrite)
		if err != nil {
			return rs, err
		}
		q.tailReg = s.layout.rx(i, rxqRDT)
		rs.rx = append(rs.rx, q)
		off += n
	}
	wb := mem[size-hugepage.IOMMUPage:]
	for i := range s.txQueues {
		n := ringBytes(s.txSize)
		q, err := newTxQueue(bar, i, mem[off:off+n], iova+off, s.txSize)
		if err != nil {
			return rs, err
		}
		q.tailReg = s.layout.tx(i, txqTDT)
		if s.headWB {
			q.useHeadWriteBack(wb[64*i:64*i+64], iova+size-hugepage.IOMMUPage+64*uint64(i))
		}
		rs.tx = append(rs.tx, q)
		off += n
	}
	return rs, nil
}

// free marks the queues released (Harvest and Reclaim return nothing,
// Drain still works) and unmaps and frees the ring memory. The device
// must no longer use the rings.
func (rs *queueRings) free() error {
	if rs == nil {
		return nil
	}
	for _, q := range rs.rx {
		q.released = true
	}
	for _, q := range rs.tx {
		q.released = true
	}
	if rs.region == nil {
		return nil
	}
	var errs []error
	if _, mapped := rs.region.IOVA(); mapped {
		if err := rs.region.Unmap(); err != nil {
			errs = append(errs, fmt.Errorf("unmap descriptor rings: %w", err))
		}
	}
	if err := rs.region.Close(); err != nil {
		errs = append(errs, fmt.Errorf("free descriptor rings: %w", err))
	}
	rs.region = nil
	if rs.iova != 0 {
		errs = append(errs, rs.alloc.Free(rs.iova))
		rs.iova = 0
	}
	return errors.Join(errs...)
}

// rxSetup is how a function programs its RX queues.
type rxSetup struct {
	dropWhenFull bool // SRRCTL.DROP_EN
	vlanStrip    bool // RXDCTL.VME
	timeout      time.Duration
}

// startRx programs receive queue q, whose register block starts at base,
// and enables it with an empty ring.
func (r regs) startRx(base uint32, q *RxQueue, s rxSetup) error {
	reg := func(off uint32) uint32 { return base + off }
	r.write(reg(rxqRXDCTL), 0)
	r.write(reg(rxqRDBAL), uint32(q.ringIOVA))
	r.write(reg(rxqRDBAH), uint32(q.ringIOVA>>32))
	r.write(reg(rxqRDLEN), uint32(q.size*descSize))
	srrctl := (q.bufSize>>srrctlBSizePktShift)&srrctlBSizePktMask | srrctlDescAdvOneBuf
	if s.dropWhenFull {
		srrctl |= srrctlDropEn
	}
	r.write(reg(rxqSRRCTL), srrctl)
	r.clear(reg(rxqDCA), dcaRxCtrlRelaxedWr)
	r.write(reg(rxqRDH), 0)
	r.write(reg(rxqRDT), 0)
	rxdctl := uint32(rxdctlEnable)
	if s.vlanStrip {
		rxdctl |= rxdctlVME
	}
	r.write(reg(rxqRXDCTL), rxdctl)
	// The tail must not move before the queue reports itself enabled.
	return r.waitSet(reg(rxqRXDCTL), rxdctlEnable, s.timeout, fmt.Sprintf("RX queue %d enable", q.index))
}

// startTx programs transmit queue q, whose register block starts at base,
// and enables it with an empty ring.
func (r regs) startTx(base uint32, q *TxQueue, t TxThresholds, timeout time.Duration) error {
	reg := func(off uint32) uint32 { return base + off }
	r.write(reg(txqTXDCTL), 0)
	r.write(reg(txqTDBAL), uint32(q.ringIOVA))
	r.write(reg(txqTDBAH), uint32(q.ringIOVA>>32))
	r.write(reg(txqTDLEN), uint32(q.size*descSize))
	if q.headWB {
		// Relaxed ordering could let the head write overtake the data
		// it reports; keep write-backs strictly ordered.
		r.clear(reg(txqDCA), dcaTxCtrlWBRelaxed)
		r.write(reg(txqTDWBAH), uint32(q.headIOVA>>32))
		r.write(reg(txqTDWBAL), uint32(q.headIOVA)|tdwbalHeadWBEn)
	} else {
		r.write(reg(txqTDWBAL), 0)
		r.write(reg(txqTDWBAH), 0)
	}
	r.write(reg(txqTDH), 0)
	r.write(reg(txqTDT), 0)
	r.write(reg(txqTXDCTL), uint32(t.Prefetch)<<txdctlPThreshShift|
		uint32(t.Host)<<txdctlHThreshShift|
		uint32(t.WriteBack)<<txdctlWThreshShift|
		txdctlEnable)
	return r.waitSet(reg(txqTXDCTL), txdctlEnable, timeout, fmt.Sprintf("TX queue %d enable", q.index))
}

// stopQueue clears a queue's enable bit and waits until the device
// confirms the queue is off.
func (r regs) stopQueue(reg, enable uint32, timeout time.Duration, what string) error {
	r.clear(reg, enable)
	if err := r.waitClear(reg, enable, timeout, what+" disable"); err != nil {
		return fmt.Errorf("%w; its buffers may still be written, do not free them", err)
	}
	return nil
}
