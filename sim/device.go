package sim

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/zcnet/zcnet/internal/idlepoll"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// Options configures a PF model. The zero value of a delay means "at once".
type Options struct {
	// Address is the PCI address the device reports.
	Address string
	// MAC is the permanent address in the modelled EEPROM, loaded into
	// RAL/RAH(0) with AV=1 by every reset.
	MAC [6]byte
	// ResetDelay is how many ticks after a reset EEC.ARD (EEPROM auto-read
	// done) and RDRXCTL.DMAIDONE stay clear.
	ResetDelay uint64
	// LinkDelay is how many ticks autonegotiation takes: after power-on,
	// reset, CTRL.LRST, AUTOC.Restart_AN or SetLink(true), LINKS reports
	// the link up only this much later (raising EICR.LSC then).
	LinkDelay uint64
	// QueueEnableDelay is how many ticks RXDCTL/TXDCTL.ENABLE takes to read
	// back as set after the driver sets it.
	QueueEnableDelay uint64
	// RxFIFOFrames bounds the receive packet buffer in frames (it is also
	// bounded in bytes by RXPBSIZE(0)); frames arriving when it is full are
	// missed (MPC, EICR.RX_MISS). Zero selects 8192: 512 KB, the 82599's
	// buffer in non-DCB mode, of 64-byte frames, so that for every frame
	// size the buffer's bytes decide, as on silicon. (The model counts
	// frame bytes only; the card also keeps some status per packet.) With
	// 1024, a buffer of 64-byte frames held an eighth of that, 3 ms at
	// 350 kpps, and make demo lost frames to every scheduling stall of
	// the simulator longer than that.
	RxFIFOFrames int
}

// DefaultOptions returns delays short enough for fast tests yet non-zero,
// so that a driver which fails to poll is caught.
func DefaultOptions() Options {
	return Options{
		Address:          "0000:01:00.0",
		MAC:              [6]byte{0x02, 0x00, 0x5e, 0x10, 0xfb, 0x01},
		ResetDelay:       4,
		LinkDelay:        16,
		QueueEnableDelay: 2,
		RxFIFOFrames:     8192,
	}
}

// PF is the model of one 82599 physical function and its port.
type PF struct {
	opts Options

	// regs is BAR0's storage, one word per register, accessed atomically:
	// the driver writes tails while the engines read them.
	regs  [barWords]uint32
	stats counters
	iommu IOMMU
	cfg   configSpace
	clock atomic.Uint64 // model ticks

	// ctl serialises control-plane side effects: interrupt causes and
	// masks, link state, queue enable latches, reset. Lock order:
	// rxMu, txMu, ctl, fifo.mu.
	ctl          sync.Mutex
	irqFDs       map[vfio.IRQKind][]int
	cable        bool        // the far end has light
	cableBackAt  uint64      // tick when a flapped link's cable is back (FlapLink), 0: none
	linkUpAt     uint64      // tick when autonegotiation completes
	linkReported bool        // link state last reported through LSC
	linkState    atomic.Bool // linkReported, for the lock-free data path
	resetDoneAt  atomic.Uint64

	rxEnableAt [NumQueues]atomic.Uint64 // 0: disabled; else 1 + tick enable completes
	txEnableAt [NumQueues]atomic.Uint64
	txActive   [NumQueues / 64]atomic.Uint64 // queues with ENABLE written, for the TX scan

	rxMu     sync.Mutex
	rx       rxEngine
	txMu     sync.Mutex
	tx       txEngine
	fifo     rxFIFO
	peer     atomic.Pointer[wire.Endpoint]
	wbDelay  atomic.Uint32 // engine passes write-backs are held (DelayWriteBack)
	mc       modelCounters
	rssOK    atomic.Bool // the Toeplitz table matches RSSRK
	rarStale atomic.Bool // the exact-match address list needs a rebuild

	unknownMu      sync.Mutex
	unknownOffsets map[uint32]uint64

	sriov sriovState // SR-IOV: the VFs and their mailboxes (sriov.go)

	runMu   sync.Mutex
	stop    chan struct{}
	running sync.WaitGroup
	closed  atomic.Bool
}

// modelCounters count what the hardware registers do not show.
type modelCounters struct {
	unknown        atomic.Uint64
	interrupts     atomic.Uint64
	rxFiltered     atomic.Uint64
	rxNotReady     atomic.Uint64
	rxFIFOFull     atomic.Uint64
	rxQueueOff     atomic.Uint64
	rxDMAFault     atomic.Uint64
	rxRunt         atomic.Uint64
	rxOversize     atomic.Uint64
	rxNoPool       atomic.Uint64
	rxPoolOff      atomic.Uint64
	txNoLink       atomic.Uint64
	txDMAFault     atomic.Uint64
	txMalformed    atomic.Uint64
	txSpoofed      atomic.Uint64
	dmaNoBusMaster atomic.Uint64
}

// Counters is a snapshot of events the model counts beyond the datasheet's
// statistics registers, so tests can assert on them.
type Counters struct {
	IOMMUFaults    uint64 // device accesses outside every IOMMU mapping
	LastFaultIOVA  uint64
	InjectedFaults uint64 // the IOMMU faults that FailDMA and FailDMARange injected
	OrphanAccesses uint64 // accesses to mapped memory whose host pages went away (see IOMMU.OrphanAccesses)
	Unknown        uint64 // accesses to offsets the model does not define
	Interrupts     uint64 // eventfd signals sent
	RxFiltered     uint64 // frames of legal size rejected by the L2/VLAN filters (no 82599 register counts them)
	RxNotReady     uint64 // frames dropped: link down, RXCTRL.RXEN=0 or SECRXCTRL.RX_DIS
	RxFIFOFull     uint64 // frames missed because the packet buffer was full (also MPC)
	RxQueueOff     uint64 // frames steered to a queue that is not enabled
	RxDMAFault     uint64 // frames dropped on an IOMMU fault
	RxRunt         uint64 // frames under 60 bytes (RUC counts those the address filters pass)
	RxOversize     uint64 // frames over the maximum size (ROC counts those the address filters pass)
	RxNoPool       uint64 // virtualization: frames the address filters passed that no pool took (PFVTCTL.DIS_DEFPL set)
	RxPoolOff      uint64 // virtualization: copies not written because PFVFRE disables their pool's receive
	TxNoLink       uint64 // frames transmitted with the link down or no cable attached
	TxDMAFault     uint64 // packets dropped on an IOMMU fault reading them (a ring the engine cannot read stalls instead)
	TxMalformed    uint64 // packets with descriptors the model cannot execute or that contradict the packet (PAYLEN, IXSM for IPv6)
	TxSpoofed      uint64 // virtualization: frames anti-spoofing dropped (SSVPC counts those of pools VMECM selects)
	DMANoBusMaster uint64 // engine passes that had work but bus mastering was off
}

// NewPF builds a PF in its power-on state: registers at reset values, link
// partner present (autonegotiation completes after LinkDelay ticks).
func NewPF(opts Options) *PF {
	if opts.Address == "" {
		opts.Address = DefaultOptions().Address
	}
	if opts.RxFIFOFrames <= 0 {
		opts.RxFIFOFrames = 8192
	}
	p := &PF{
		opts:           opts,
		irqFDs:         make(map[vfio.IRQKind][]int),
		unknownOffsets: make(map[uint32]uint64),
		cable:          true,
	}
	p.cfg.init(func() { _ = p.Reset() })
	p.initSRIOV()
	p.fifo.init(opts.RxFIFOFrames)
	p.rx.init()
	p.tx.init()
	p.ctl.Lock()
	p.resetLocked()
	p.ctl.Unlock()
	return p
}

// Address implements vfio.Device.
func (p *PF) Address() string { return p.opts.Address }

// BAR implements vfio.Device. Only BAR 0, the registers, is modelled.
func (p *PF) BAR(index int) (vfio.BAR, error) {
	if index != 0 {
		return nil, fmt.Errorf("sim: BAR %d is not modelled (only BAR 0, the registers): %w", index, vfio.ErrNotSupported)
	}
	return (*bar)(p), nil
}

// Config implements vfio.Device.
func (p *PF) Config() vfio.ConfigSpace { return configPort{&p.cfg} }

// DMA implements vfio.Device.
func (p *PF) DMA() vfio.DMAMapper { return &p.iommu }

// IOMMU gives tests the fault counters of the DMA domain.
func (p *PF) IOMMU() *IOMMU { return &p.iommu }

// IRQs implements vfio.Device.
func (p *PF) IRQs() vfio.IRQs { return irqPort{p} }

// Reset implements vfio.Device: a function-level reset returns every
// register to its reset value, like CTRL.RST. Configuration space keeps its
// state (VFIO saves and restores it around a reset).
func (p *PF) Reset() error {
	p.globalReset()
	return nil
}

// Close implements vfio.Device: the engines stop and the BAR reads all ones.
func (p *PF) Close() error {
	p.Stop()
	p.closed.Store(true)
	return nil
}

// Attach connects the port's transmit side to peer (nil disconnects).
func (p *PF) Attach(peer wire.Endpoint) {
	if peer == nil {
		p.peer.Store(nil)
		return
	}
	p.peer.Store(&peer)
}

// SetLink plugs (up) or unplugs the cable. Plugging starts
// autonegotiation; either change raises EICR.LSC when LINKS changes.
func (p *PF) SetLink(up bool) {
	p.ctl.Lock()
	defer p.ctl.Unlock()
	if up && !p.cable {
		p.linkUpAt = p.clock.Load() + p.opts.LinkDelay
	}
	p.cable = up
	p.cableBackAt = 0 // ends a flap
	p.checkLinkLocked()
}

// restartANLocked models CTRL.LRST or AUTOC.Restart_AN: the link drops
// and comes back after LinkDelay.
func (p *PF) restartANLocked() {
	p.linkUpAt = p.clock.Load() + p.opts.LinkDelay + 1
	p.checkLinkLocked()
}

func (p *PF) linkUpLocked(now uint64) bool { return p.cable && now >= p.linkUpAt }

// checkLinkLocked raises LSC when the link state changed since last seen.
func (p *PF) checkLinkLocked() {
	now := p.clock.Load()
	p.plugBackLocked(now)
	up := p.linkUpLocked(now)
	p.linkState.Store(up)
	if up != p.linkReported {
		p.linkReported = up
		p.raiseLocked(eicrLSC)
	}
}

// linkUp is the lock-free view the data path uses.
func (p *PF) linkUp() bool { return p.linkState.Load() }

// globalReset is CTRL.RST / FLR: it waits for the engines, then returns
// every register, counter, queue and the packet buffer to power-on state.
func (p *PF) globalReset() {
	p.rxMu.Lock()
	p.txMu.Lock()
	p.ctl.Lock()
	p.resetLocked()
	p.ctl.Unlock()
	p.txMu.Unlock()
	p.rxMu.Unlock()
}

func (p *PF) resetLocked() {
	for w := range p.regs {
		atomic.StoreUint32(&p.regs[w], bar0Map.reset[w])
	}
	mac := p.opts.MAC
	p.setReg(regRAL0, uint32(mac[0])|uint32(mac[1])<<8|uint32(mac[2])<<16|uint32(mac[3])<<24)
	p.setReg(regRAL0+4, uint32(mac[4])|uint32(mac[5])<<8|rahAV)
	p.stats.reset()
	for q := range p.rxEnableAt {
		p.rxEnableAt[q].Store(0)
		p.txEnableAt[q].Store(0)
	}
	for i := range p.txActive {
		p.txActive[i].Store(0)
	}
	p.tx.reset()
	p.rx.wb.drop()
	p.fifo.clear()
	p.rssOK.Store(false)
	p.rarStale.Store(true)
	now := p.clock.Load()
	p.resetDoneAt.Store(now + p.opts.ResetDelay)
	// Reset restarts autonegotiation; EICR was just cleared, so the drop
	// is not reported, only the link coming back.
	p.linkUpAt = now + p.opts.LinkDelay
	p.linkReported = false
	p.linkState.Store(false)
	p.resetVFMailboxes() // RSTI on every VF until the PF driver sets PFRSTD
}

// tick advances model time by one and returns the new time.
func (p *PF) tick() uint64 { return p.clock.Add(1) }

// queueEnabled reports whether a queue's ENABLE has taken effect.
func queueEnabled(at *atomic.Uint64, now uint64) bool {
	a := at.Load()
	return a != 0 && now+1 >= a
}

// ringValid checks a descriptor ring length the way the datasheet bounds
// it: a non-zero multiple of 128 bytes (8 descriptors), at most 128 KB.
func ringValid(rdlen uint32) bool {
	return rdlen != 0 && rdlen%128 == 0 && rdlen <= 128<<10
}

// Step runs one pass of both engines: receive the frames waiting in the
// packet buffer, then transmit what the TX rings hold. It returns the
// number of frames moved. Step must not be used while Start is running.
func (p *PF) Step() int {
	p.pollLink()
	return p.stepRX() + p.stepTX()
}

// pollLink advances time by one tick and reports link changes.
func (p *PF) pollLink() {
	p.tick()
	p.ctl.Lock()
	p.checkLinkLocked()
	p.ctl.Unlock()
}

// Start runs the two engines in goroutines until Stop.
func (p *PF) Start() {
	p.runMu.Lock()
	defer p.runMu.Unlock()
	if p.stop != nil {
		return
	}
	p.stop = make(chan struct{})
	p.running.Add(2)
	go p.run(p.stop, func() int { p.pollLink(); return p.stepRX() })
	go p.run(p.stop, p.stepTX)
}

// Stop halts the engines started by Start and waits for them.
func (p *PF) Stop() {
	p.runMu.Lock()
	defer p.runMu.Unlock()
	if p.stop == nil {
		return
	}
	close(p.stop)
	p.running.Wait()
	p.stop = nil
}

func (p *PF) run(stop <-chan struct{}, step func() int) {
	defer p.running.Done()
	idlepoll.Run(stop, step)
}

// Counters returns a snapshot of the model's own counters.
func (p *PF) Counters() Counters {
	f, last := p.iommu.Faults()
	orphans, _ := p.iommu.OrphanAccesses()
	m := &p.mc
	return Counters{
		IOMMUFaults:    f,
		LastFaultIOVA:  last,
		InjectedFaults: p.iommu.InjectedFaults(),
		OrphanAccesses: orphans,
		Unknown:        m.unknown.Load(),
		Interrupts:     m.interrupts.Load(),
		RxFiltered:     m.rxFiltered.Load(),
		RxNotReady:     m.rxNotReady.Load(),
		RxFIFOFull:     m.rxFIFOFull.Load(),
		RxQueueOff:     m.rxQueueOff.Load(),
		RxDMAFault:     m.rxDMAFault.Load(),
		RxRunt:         m.rxRunt.Load(),
		RxOversize:     m.rxOversize.Load(),
		RxNoPool:       m.rxNoPool.Load(),
		RxPoolOff:      m.rxPoolOff.Load(),
		TxNoLink:       m.txNoLink.Load(),
		TxDMAFault:     m.txDMAFault.Load(),
		TxMalformed:    m.txMalformed.Load(),
		TxSpoofed:      m.txSpoofed.Load(),
		DMANoBusMaster: m.dmaNoBusMaster.Load(),
	}
}

// UnknownOffsets lists the BAR offsets accessed that the model does not
// define, with how often each was touched, sorted by offset.
func (p *PF) UnknownOffsets() []UnknownAccess {
	p.unknownMu.Lock()
	defer p.unknownMu.Unlock()
	out := make([]UnknownAccess, 0, len(p.unknownOffsets))
	for off, n := range p.unknownOffsets {
		out = append(out, UnknownAccess{Offset: off, Count: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	return out
}

// UnknownAccess is one undefined BAR offset a driver touched.
type UnknownAccess struct {
	Offset uint32
	Count  uint64
}

func (p *PF) noteUnknown(off uint32) {
	p.mc.unknown.Add(1)
	p.unknownMu.Lock()
	p.unknownOffsets[off]++
	p.unknownMu.Unlock()
}
