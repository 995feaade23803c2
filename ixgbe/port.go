package ixgbe

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vfio"
)

// Config describes how Open brings a port up. The zero value of every field
// selects a sensible default.
type Config struct {
	// RxQueues and TxQueues are the numbers of queues (default 1 each, at
	// most 64).
	RxQueues, TxQueues int
	// RxRingSize and TxRingSize are descriptors per ring: a power of two,
	// 8 to 4096 (default 512).
	RxRingSize, TxRingSize int
	// RxBufSize is the size of every buffer posted to an RX queue, a
	// multiple of 1024 from 1024 to 16384 (default 2048): SRRCTL.BSIZEPACKET
	// has 1 KiB granularity, and a frame longer than one buffer spans
	// several descriptors. Buffers posted must be at least this long.
	RxBufSize int
	// MTU is the largest IP packet (default 1500, at most 9710). Frames up
	// to MTU+18 bytes are accepted (MAXFRS); above 1500, jumbo frames are
	// enabled.
	MTU int
	// HoldWhenFull keeps frames in the packet buffer when a queue has no
	// free descriptor, instead of dropping them and counting QPRDC (the
	// default, SRRCTL.DROP_EN). Holding lets one stalled queue block the
	// whole port.
	HoldWhenFull bool
	// RSS spreads received flows over the RX queues by the Toeplitz hash
	// of their addresses and ports. RSSKey (default: a fixed key) and
	// RETA (default: queues round-robin) program it; see SetRETA.
	RSS    bool
	RSSKey *[40]byte
	// VLANStrip removes 802.1Q tags from received frames and reports them
	// in RxDone.VLAN.
	VLANStrip bool
	// Promiscuous accepts every unicast and multicast frame;
	// AllMulticast every multicast frame.
	Promiscuous, AllMulticast bool
	// TxThresholds are TXDCTL's prefetch, host and write-back thresholds;
	// the zero value selects 32/1/0: prefetch in bursts of 32 descriptors
	// once one is pending, and write back only descriptors marked RS.
	TxThresholds TxThresholds
	// TxHeadWriteBack makes the device report TX completions by writing
	// its head index to memory (TDWBAL/H) instead of setting DD in
	// descriptors; Reclaim then reads one word per call.
	TxHeadWriteBack bool
	// LinkTimeout bounds how long Open waits for the link (default 10 s).
	// A negative value does not wait: Open returns with the link down and
	// the caller learns of it through Link or OnLinkChange.
	LinkTimeout time.Duration
	// ResetTimeout bounds each wait of the reset sequence (default 1 s).
	ResetTimeout time.Duration
	// LinkInterrupt delivers link changes through the device's interrupt
	// (EICR.LSC on an MSI eventfd) to OnLinkChange; without it, the caller
	// polls with PollLink.
	LinkInterrupt bool
	// OnLinkChange, if set, is called with the new state whenever the link
	// changes (from PollLink, or from the interrupt goroutine).
	OnLinkChange func(Link)
	// IOVA allocates the I/O virtual addresses the descriptor rings are
	// mapped at. Pass the allocator of the IOMMU domain your buffers are
	// mapped in, so the ranges cannot collide; nil uses a private one over
	// the default window, which is only safe if your buffers use another
	// range.
	IOVA *hugepage.IOVAAllocator
	// RingMemory selects how descriptor ring memory is allocated (default
	// 2 MiB hugepages).
	RingMemory hugepage.Options
	// Pools, if not 0, turns on pool switching (VMDq, see pools.go): the
	// NIC steers each received frame into the queues of the pool its
	// destination MAC belongs to (AddPoolMAC), replicating broadcast and
	// multicast to every pool. PoolQueues (1, 2 or 4; default 1) is how
	// many queues of a pool RSS spreads its frames over. The port then
	// has Pools * QueuesPerPool() queues each way (leave RxQueues,
	// TxQueues and RSS zero): pool p owns queues p*QueuesPerPool()
	// onwards.
	Pools, PoolQueues int
}

// TxThresholds are the TXDCTL descriptor thresholds (7-bit values).
type TxThresholds struct {
	Prefetch, Host, WriteBack uint8
}

const (
	defaultRingSize  = 512
	minRingSize      = 8
	maxRingSize      = 4096
	defaultBufSize   = 2048
	defaultMTU       = 1500
	maxMTU           = 9710 // largest MAXFRS the 82599 takes is 15.5 KB; Linux caps at 9710+18
	ethOverhead      = 18   // Ethernet header and FCS
	standardMaxFrame = 1518
)

func (c *Config) setDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.RxQueues, 1)
	def(&c.TxQueues, 1)
	def(&c.RxRingSize, defaultRingSize)
	def(&c.TxRingSize, defaultRingSize)
	def(&c.RxBufSize, defaultBufSize)
	def(&c.MTU, defaultMTU)
	if c.LinkTimeout == 0 {
		c.LinkTimeout = 10 * time.Second
	}
	if c.ResetTimeout == 0 {
		c.ResetTimeout = time.Second
	}
	if c.TxThresholds == (TxThresholds{}) {
		c.TxThresholds = TxThresholds{Prefetch: 32, Host: 1}
	}
	if c.RingMemory.Name == "" {
		c.RingMemory.Name = "zcnet-ixgbe-rings"
	}
	if c.Pools != 0 {
		def(&c.PoolQueues, 1)
		qpp, _, err := poolLayout(c.Pools, c.PoolQueues)
		if err != nil {
			return err
		}
		if c.RSS || (c.RxQueues != 1 && c.RxQueues != c.Pools*qpp) || (c.TxQueues != 1 && c.TxQueues != c.Pools*qpp) {
			return fmt.Errorf("ixgbe: with %d pools the port has %d queues each way and RSS within each pool: leave RxQueues, TxQueues and RSS unset", c.Pools, c.Pools*qpp)
		}
		c.RxQueues, c.TxQueues = c.Pools*qpp, c.Pools*qpp
	} else if c.PoolQueues != 0 {
		return errors.New("ixgbe: PoolQueues without Pools")
	}
	switch {
	case c.Pools == 0 && (c.RxQueues < 1 || c.RxQueues > maxQueues || c.TxQueues < 1 || c.TxQueues > maxQueues):
		return fmt.Errorf("ixgbe: %d RX / %d TX queues requested; each must be 1 to %d", c.RxQueues, c.TxQueues, maxQueues)
	case c.RSS && c.RxQueues > maxRSSQueues:
		return fmt.Errorf("ixgbe: RSS spreads over at most %d queues, %d requested", maxRSSQueues, c.RxQueues)
	case !validRingSize(c.RxRingSize) || !validRingSize(c.TxRingSize):
		return fmt.Errorf("ixgbe: ring sizes %d (RX) and %d (TX) must be powers of two from %d to %d", c.RxRingSize, c.TxRingSize, minRingSize, maxRingSize)
	case c.RxBufSize%1024 != 0 || c.RxBufSize < 1024 || c.RxBufSize > 16384:
		return fmt.Errorf("ixgbe: RX buffer size %d must be a multiple of 1024 from 1024 to 16384 (SRRCTL has 1 KiB granularity)", c.RxBufSize)
	case c.MTU < 68 || c.MTU > maxMTU:
		return fmt.Errorf("ixgbe: MTU %d out of range 68-%d", c.MTU, maxMTU)
	case c.TxThresholds.Prefetch > 127 || c.TxThresholds.Host > 127 || c.TxThresholds.WriteBack > 127:
		return fmt.Errorf("ixgbe: TX thresholds %+v exceed 7 bits", c.TxThresholds)
	case c.TxHeadWriteBack && c.TxThresholds.WriteBack != 0:
		return errors.New("ixgbe: TX head write-back needs a zero write-back threshold (completions come from RS descriptors)")
	}
	return nil
}

func validRingSize(n int) bool { return n >= minRingSize && n <= maxRingSize && n&(n-1) == 0 }

// Port is one 82599 physical function brought up by Open. Its queues are
// used by their owners without locking; the control-plane methods (filters,
// statistics, link) are safe for concurrent use with each other and with the
// queues.
type Port struct {
	dev vfio.Device
	bar vfio.BAR
	cfg Config
	mac net.HardwareAddr

	rings     *queueRings
	iova      *hugepage.IOVAAllocator
	rx        []*RxQueue
	tx        []*TxQueue
	stopped   bool
	closed    bool
	linkIRQ   *linkWatcher
	ctlMu     sync.Mutex // filters, RSS, stats, stop/close
	linkMu    sync.Mutex // link state last reported
	lastLink  Link
	linkKnown bool
	stats     Stats
	filters   filterState
	qpp       int // queues per pool; 0: no pools
	pools     poolState
	pvlan     poolVLANState // pools' access VLANs (vlanpool.go)
}

// Open takes over the 82599 PF behind dev and brings it up as cfg says:
// reset, link, receive and transmit paths, queues enabled and empty. On
// error the device is left reset and nothing stays mapped.
func Open(dev vfio.Device, cfg Config) (*Port, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkModel(dev.Config(), false); err != nil {
		return nil, fmt.Errorf("ixgbe %s: %w", dev.Address(), err)
	}
	if err := vfio.EnableBusMaster(dev.Config()); err != nil {
		return nil, fmt.Errorf("ixgbe %s: enable bus mastering: %w", dev.Address(), err)
	}
	bar, err := dev.BAR(0)
	if err != nil {
		return nil, fmt.Errorf("ixgbe %s: map BAR0: %w", dev.Address(), err)
	}
	p := &Port{dev: dev, bar: bar, cfg: cfg, iova: cfg.IOVA}
	if cfg.Pools != 0 {
		p.qpp, _, _ = poolLayout(cfg.Pools, cfg.PoolQueues)
	}
	if p.iova == nil {
		if p.iova, err = hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit); err != nil {
			return nil, err
		}
	}
	if err := p.bringUp(); err != nil {
		p.release()
		return nil, fmt.Errorf("ixgbe %s: %w", dev.Address(), err)
	}
	return p, nil
}

// bringUp is the initialisation sequence of datasheet section 4.6.
func (p *Port) bringUp() error {
	if err := p.reset(); err != nil {
		return err
	}
	p.mac = p.readPermanentMAC()
	p.set(regCTRLEXT, ctrlExtDrvLoad|ctrlExtNSDis)
	p.restartAutoneg()
	p.readStats() // the counters clear on read: start from zero
	p.stats = Stats{}
	if err := p.allocRings(); err != nil {
		return err
	}
	if err := p.initRX(); err != nil {
		return err
	}
	if err := p.initTX(); err != nil {
		return err
	}
	if p.cfg.LinkInterrupt {
		w, err := startLinkWatcher(p)
		if err != nil {
			return err
		}
		p.linkIRQ = w
	}
	if p.cfg.LinkTimeout > 0 {
		if err := p.waitLink(p.cfg.LinkTimeout); err != nil {
			return err
		}
	}
	return nil
}

// reset masks interrupts, quiesces bus mastering and resets the device,
// then waits for the EEPROM auto-read and DMA initialisation to finish
// (datasheet 4.6.3, 4.2.1.6.1).
func (p *Port) reset() error {
	p.maskInterrupts()
	// Stop master requests first, so the reset cannot cut a DMA in half.
	// The device may refuse while a request is stuck; the reset below
	// clears that anyway, so a timeout here is not an error.
	p.set(regCTRL, ctrlGIODis)
	_ = p.waitClear(regSTATUS, statusGIOMaster, p.cfg.ResetTimeout/10, "PCIe master disable (STATUS.GIO)")

	p.write(regCTRL, p.read(regCTRL)|ctrlRST|ctrlLRST)
	if err := p.waitClear(regCTRL, ctrlRST|ctrlLRST, p.cfg.ResetTimeout, "device reset (CTRL.RST)"); err != nil {
		return err
	}
	// The datasheet asks for at least 10 ms before the device is
	// configured after a reset.
	time.Sleep(10 * time.Millisecond)
	p.maskInterrupts()
	if err := p.waitSet(regEEC, eecARD, p.cfg.ResetTimeout, "EEPROM auto-read (EEC.ARD)"); err != nil {
		return err
	}
	if p.read(regEEC)&eecPRES == 0 {
		return errors.New("no valid EEPROM (EEC.PRES is 0): the NIC cannot load its MAC address and link settings; check the card's firmware")
	}
	return p.waitSet(regRDRXCTL, rdrxctlDMAIDone, p.cfg.ResetTimeout, "DMA initialisation (RDRXCTL.DMAIDONE)")
}

func (p *Port) maskInterrupts() {
	p.write(regEIMC, eimcAll)
	p.read(regEICR) // clear what is pending
}

// readPermanentMAC reads the address the EEPROM loaded into RAR 0.
func (p *Port) readPermanentMAC() net.HardwareAddr {
	lo, hi := p.read(regRAL), p.read(regRAH)
	return net.HardwareAddr{byte(lo), byte(lo >> 8), byte(lo >> 16), byte(lo >> 24), byte(hi), byte(hi >> 8)}
}

// MAC is the port's permanent address.
func (p *Port) MAC() net.HardwareAddr { return append(net.HardwareAddr(nil), p.mac...) }

// allocRings allocates and maps the descriptor rings and makes the
// queues over them.
func (p *Port) allocRings() error {
	rs, err := newQueueRings(p.bar, p.dev.DMA(), p.iova, ringSpec{
		layout:   pfQueues,
		rxQueues: p.cfg.RxQueues, txQueues: p.cfg.TxQueues,
		rxSize: p.cfg.RxRingSize, txSize: p.cfg.TxRingSize,
		rxBufSize: p.cfg.RxBufSize, maxRxWrite: p.MaxRxWrite(),
		headWB: p.cfg.TxHeadWriteBack, memory: p.cfg.RingMemory,
	})
	p.rings, p.rx, p.tx = rs, rs.rx, rs.tx
	return err
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) &^ (a - 1) }

// NumRxQueues and NumTxQueues report how many queues the port has.
func (p *Port) NumRxQueues() int { return len(p.rx) }
func (p *Port) NumTxQueues() int { return len(p.tx) }

// RxQueue returns receive queue i. Each queue has one owner at a time.
func (p *Port) RxQueue(i int) *RxQueue { return p.rx[i] }

// TxQueue returns transmit queue i. Each queue has one owner at a time.
func (p *Port) TxQueue(i int) *TxQueue { return p.tx[i] }

// Stop disables every queue and receiving, and waits until the device
// confirms each queue is off. Afterwards no DMA to posted buffers happens,
// so their owners may take them back with RxQueue.Drain and TxQueue.Drain.
func (p *Port) Stop() error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	return p.stopLocked()
}

func (p *Port) stopLocked() error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	p.clear(regRXCTRL, rxctrlRXEN)
	var errs []error
	for _, q := range p.rx {
		errs = append(errs, p.stopQueue(rxQueueReg(q.index, rxqRXDCTL), rxdctlEnable, fmt.Sprintf("RX queue %d", q.index)))
		q.stopped = true
	}
	for _, q := range p.tx {
		errs = append(errs, p.stopQueue(txQueueReg(q.index, txqTXDCTL), txdctlEnable, fmt.Sprintf("TX queue %d", q.index)))
		q.stopped = true
	}
	return errors.Join(errs...)
}

func (p *Port) stopQueue(reg, enable uint32, what string) error {
	return regs{p.bar}.stopQueue(reg, enable, p.cfg.ResetTimeout, what)
}

// Close stops the port (if Stop was not called), masks its interrupts,
// unmaps and frees the descriptor rings and releases BAR0's device. Call
// Drain on the queues between Stop and Close to get posted buffers back;
// Drain still works after Close.
func (p *Port) Close() error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.stopLocked()
	if err != nil {
		// The device did not confirm every queue off: reset it so that
		// nothing DMAs into memory about to be unmapped.
		p.write(regCTRL, p.read(regCTRL)|ctrlRST)
		time.Sleep(10 * time.Millisecond)
	}
	return errors.Join(err, p.release())
}

// release undoes what bring-up acquired: interrupt watcher, ring mapping,
// IOVA range.
func (p *Port) release() error {
	var errs []error
	p.maskInterrupts()
	if p.linkIRQ != nil {
		errs = append(errs, p.linkIRQ.stop())
		p.linkIRQ = nil
	}
	p.clear(regCTRLEXT, ctrlExtDrvLoad)
	errs = append(errs, p.rings.free())
	return errors.Join(errs...)
}
