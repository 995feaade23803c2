package sim

import "encoding/binary"

// Fault injection: events a driver must survive that a healthy model never
// produces on its own. Each is counted where the 82599 (or, where it has no
// register for it, the model) counts the real event, so a test can check
// that nothing was lost without being counted. Injected faults outlive a
// device reset: they belong to the test, not to the device.

// FlapLink takes the link down now, as if the cable were pulled, and plugs
// it back after down ticks; autonegotiation then takes LinkDelay ticks as
// usual. Both changes raise EICR.LSC. While the link is down received
// frames are dropped (Counters.RxNotReady: the far end would not have sent
// them, and no 82599 register counts them) and transmitted frames complete
// without reaching the wire (Counters.TxNoLink). SetLink ends a flap.
func (p *PF) FlapLink(down uint64) {
	p.ctl.Lock()
	defer p.ctl.Unlock()
	p.cable = false
	p.cableBackAt = 0
	p.checkLinkLocked() // the drop is reported however short the flap
	p.cableBackAt = p.clock.Load() + max(down, 1)
}

// plugBackLocked ends a flap whose time is up.
func (p *PF) plugBackLocked(now uint64) {
	if p.cableBackAt != 0 && now >= p.cableBackAt {
		p.cableBackAt = 0
		p.cable = true
		p.linkUpAt = now + p.opts.LinkDelay
	}
}

// DelayWriteBack makes both DMA engines hold every descriptor write-back
// (RX descriptors, TX descriptors and the TX head write-back) for passes
// engine passes after the data moved, as a device batching its write-backs
// does. Interrupts for the held completions are raised when they are
// written. Zero writes back at once again, starting with whatever is held,
// on the next pass. Disabling a queue writes back everything held, as the
// 82599 finishes its pending DMA before RXDCTL/TXDCTL.ENABLE reads 0.
func (p *PF) DelayWriteBack(passes uint32) { p.wbDelay.Store(passes) }

// FailDMA makes the next n device accesses fault as if their IOVA were not
// mapped: counted as IOMMU faults (and in Counters.InjectedFaults), the
// frame or packet behind each dropped where an unmapped buffer drops it.
func (p *PF) FailDMA(n uint64) { p.iommu.failNext(n) }

// FailDMARange makes every device access that touches [iova, iova+size)
// fault as if that range were not mapped, until ClearDMAFailures.
func (p *PF) FailDMARange(iova, size uint64) { p.iommu.failRange(iova, size) }

// ClearDMAFailures ends the faults FailDMA and FailDMARange injected.
func (p *PF) ClearDMAFailures() {
	p.iommu.failNext(0)
	p.iommu.failRange(0, 0)
}

// writeBack is one descriptor (or TX head) write-back: the dwords the
// device writes and where.
type writeBack struct {
	iova  uint64
	words [4]uint32 // the descriptor's dwords, little-endian in memory
	set   uint8     // which words are written: bit i for words[i]
	pub   uint8     // the word holding DD (or the head), stored last and atomically
	or    bool      // pub is ORed into the word in memory (legacy TX keeps CSS/VLAN)
	size  uint8     // bytes covered: 16, or 4 for a head write-back
	cause uint32    // interrupt causes raised once it is written
	due   uint64    // the engine pass at which a held write-back is written
	dom   *IOMMU    // the domain the write goes through (a VF's); nil: the engine's
}

// apply writes w into d, the memory at w.iova. The word with DD goes last,
// atomically, so a driver that sees DD sees the rest.
func (w *writeBack) apply(d []byte) {
	le := binary.LittleEndian
	for i := range w.words {
		if w.set&(1<<i) != 0 && i != int(w.pub) {
			le.PutUint32(d[4*i:], w.words[i])
		}
	}
	v := w.words[w.pub]
	if w.or {
		v |= atomicLoadLE32(d[4*w.pub:])
	}
	atomicStoreLE32(d[4*w.pub:], v)
}

// writeBacks is an engine's write-back stage. It belongs to the engine and
// is used under the engine's lock.
type writeBacks struct {
	pass  uint64      // engine passes so far
	delay uint64      // the delay in force for this pass
	held  []writeBack // in the order the device produced them
}

// begin starts an engine pass with the delay DelayWriteBack set.
func (h *writeBacks) begin(delay uint32) {
	h.pass++
	h.delay = uint64(delay)
}

// holding reports whether a write-back produced now must wait: delayed
// ones must, and so must any while older ones wait, to keep their order.
func (h *writeBacks) holding() bool { return h.delay != 0 || len(h.held) != 0 }

func (h *writeBacks) hold(w *writeBack) {
	w.due = h.pass + h.delay
	h.held = append(h.held, *w)
}

// flush writes back, in order, the held write-backs that are due (all of
// them when all is set, or when no delay is in force any more) and returns
// the interrupt causes to raise. The caller holds the IOMMU read lock: the
// memory may have been unmapped since, which faults as it would on silicon.
func (h *writeBacks) flush(u *IOMMU, all bool) (causes uint32) {
	all = all || h.delay == 0
	k := 0
	for ; k < len(h.held); k++ {
		w := &h.held[k]
		if !all && w.due > h.pass {
			break
		}
		dom := u
		if w.dom != nil {
			dom = w.dom
		}
		if d, ok := dom.slice(w.iova, int(w.size)); ok {
			w.apply(d)
		}
		causes |= w.cause
	}
	h.held = h.held[:copy(h.held, h.held[k:])]
	return causes
}

// drop forgets what is held: a reset abandons write-backs in flight.
func (h *writeBacks) drop() { h.held = h.held[:0] }
