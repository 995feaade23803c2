package sim

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// VFBARSize is the size of an 82599 VF's register BAR (BAR 0; BAR 3, the
// MSI-X table, is another 16 KB and not modelled).
const VFBARSize = 0x4000

// VF register map (ixgbevf regs.h, DPDK ixgbe_vf.h).
const (
	vfCTRL       = 0x0000
	vfSTATUS     = 0x0008
	vfLINKS      = 0x0010
	vfFRTIMER    = 0x0048
	vfEICR       = 0x0100
	vfEICS       = 0x0104
	vfEIMS       = 0x0108
	vfEIMC       = 0x010C
	vfEIAC       = 0x0110
	vfEIAM       = 0x0114
	vfIVAR0      = 0x0120 // 4 registers
	vfIVARMISC   = 0x0140
	vfRSCINT0    = 0x0180 // 4 registers
	vfMBMEM      = 0x0200 // 16 words
	vfMAILBOX    = 0x02FC
	vfPSRTYPE    = 0x0300
	vfEITR0      = 0x0820 // 3 registers
	vfRXMEMWRAP  = 0x3190
	vfRXQ0       = 0x1000 // + 0x40 per queue, PF RX block layout
	vfTXQ0       = 0x2000 // + 0x40 per queue, PF TX block layout
	vfGPRC       = 0x101C
	vfGORCLSB    = 0x1020
	vfGORCMSB    = 0x1024
	vfMPRC       = 0x1034
	vfGPTC       = 0x201C
	vfGOTCLSB    = 0x2020
	vfGOTCMSB    = 0x2024
	vfMaxQueues  = 8
	vfMSIXVector = 3 // MSI-X vectors of an 82599 VF

	vfCtrlRST = 1 << 26
)

// VF is the model of one 82599 virtual function (device 8086:10ED): a
// vfio.Device of its own, with its own configuration space, its own BAR
// (the VF register map) and its own IOMMU domain. VF v is pool v of its
// PF's switch, and its queue i is the PF's queue v*qpp+i (qpp from
// GCR_EXT.VT_Mode): the VF's rings run on the PF's DMA engines, through
// the VF's domain, so the VF's DMA reaches only what was mapped for it.
type VF struct {
	pf    *PF
	index int
	addr  string
	cfg   configSpace
	iommu IOMMU
	gone  atomic.Bool // VF Enable cleared: the function no longer exists

	irqMu  sync.Mutex
	irqFDs map[vfio.IRQKind][]int
	eicr   uint32 // VTEICR
	eims   uint32 // VTEIMS
	eiac   uint32
	eiam   uint32
	ivar   [4]atomic.Uint32
	misc   atomic.Uint32 // VTIVAR_MISC
	eitr   [3]atomic.Uint32
	rscint [4]atomic.Uint32

	pending    atomic.Uint32 // queue causes noted by the engines (sriov.go)
	interrupts atomic.Uint64
	unknown    atomic.Uint64

	st vfStats
}

// vfStats are the VF's statistics: never cleared by a read, wrapping at
// 32 bits (packets) or 36 bits (octets).
type vfStats struct {
	rxPackets, rxBytes, rxMulticast atomic.Uint64
	txPackets, txBytes              atomic.Uint64
}

func newVF(p *PF, i int) *VF {
	vf := &VF{pf: p, index: i, addr: vfAddress(p.opts.Address, i), irqFDs: make(map[vfio.IRQKind][]int)}
	vf.iommu.shared = &p.iommu.mu
	vf.cfg.initVF(func() { _ = vf.Reset() })
	return vf
}

// initVF lays out a VF's configuration space as vfio-pci presents it:
// vendor and device ID (which a VF's own header reads as FFFFh; vfio-pci
// fills them in), the command register's memory bit (emulated by
// vfio-pci), BAR 0 and BAR 3, MSI-X with 3 vectors, PCI Express with FLR.
func (c *configSpace) initVF(flr func()) {
	c.flr = flr
	le := binary.LittleEndian
	b, w := c.b[:], c.writable[:]
	le.PutUint16(b[vfio.PCIVendorID:], VendorIntel)
	le.PutUint16(b[vfio.PCIDeviceID:], DeviceIDVF)
	le.PutUint16(b[vfio.PCICommand:], vfio.PCICommandMemory)
	le.PutUint16(b[vfio.PCIStatus:], vfio.PCIStatusCapList)
	b[vfio.PCIRevision] = 0x01
	b[0x0B] = 0x02
	le.PutUint32(b[vfio.PCIBAR0:], 0xC)
	le.PutUint32(b[vfio.PCIBAR0+12:], 0xC) // BAR 3
	le.PutUint16(b[vfio.PCISubVendor:], VendorIntel)
	le.PutUint16(b[vfio.PCISubsystem:], 0x000C)
	b[vfio.PCICapPtr] = capMSIX
	b[capMSIX], b[capMSIX+1] = vfio.PCICapIDMSIX, capPCIe
	le.PutUint16(b[capMSIX+2:], vfMSIXVector-1)
	le.PutUint32(b[capMSIX+4:], 3)        // table in BAR 3 at 0
	le.PutUint32(b[capMSIX+8:], 0x2000|3) // PBA in BAR 3 at 0x2000
	b[capPCIe], b[capPCIe+1] = vfio.PCICapIDPCIExpress, 0
	le.PutUint16(b[capPCIe+2:], 0x0002)
	le.PutUint32(b[capPCIe+4:], 1<<28|0x2)
	le.PutUint16(w[vfio.PCICommand:], 0x0406) // memory, master, INTx disable
	for _, bar := range []int{vfio.PCIBAR0, vfio.PCIBAR0 + 12} {
		le.PutUint32(w[bar:], ^uint32(VFBARSize-1)&^0xF)
		le.PutUint32(w[bar+4:], 0xFFFFFFFF)
	}
	le.PutUint16(w[capMSIX+2:], 0xC000)
	le.PutUint16(w[capPCIe+vfio.PCIExpressDevCtl:], 0xFFFF)
	c.command.Store(uint32(vfio.PCICommandMemory))
}

// Index is the VF's number (its pool).
func (vf *VF) Index() int { return vf.index }

// PF is the physical function the VF belongs to.
func (vf *VF) PF() *PF { return vf.pf }

// Address implements vfio.Device: PF routing ID + 128 + 2*index.
func (vf *VF) Address() string { return vf.addr }

// BAR implements vfio.Device: BAR 0, the VF registers.
func (vf *VF) BAR(index int) (vfio.BAR, error) {
	if index != 0 {
		return nil, fmt.Errorf("sim: VF BAR %d is not modelled (only BAR 0, the registers): %w", index, vfio.ErrNotSupported)
	}
	return (*vfBAR)(vf), nil
}

// Config implements vfio.Device.
func (vf *VF) Config() vfio.ConfigSpace { return configPort{&vf.cfg} }

// DMA implements vfio.Device: the VF's own IOMMU domain.
func (vf *VF) DMA() vfio.DMAMapper { return &vf.iommu }

// IOMMU gives tests the VF domain's fault counters.
func (vf *VF) IOMMU() *IOMMU { return &vf.iommu }

// IRQs implements vfio.Device: MSI-X, 3 vectors.
func (vf *VF) IRQs() vfio.IRQs { return vfIRQs{vf} }

// Reset implements vfio.Device: a function-level reset of the VF, which
// the PF sees in PFVFLRE.
func (vf *VF) Reset() error {
	vf.functionReset(true)
	return nil
}

// Close implements vfio.Device. vfio-pci resets a function it releases;
// so does the model. The VF stays usable by a later user.
func (vf *VF) Close() error {
	vf.functionReset(true)
	vf.irqMu.Lock()
	clear(vf.irqFDs)
	vf.irqMu.Unlock()
	return nil
}

// Interrupts counts the eventfd signals sent for the VF.
func (vf *VF) Interrupts() uint64 { return vf.interrupts.Load() }

// UnknownAccesses counts accesses to VF BAR offsets the model does not
// define.
func (vf *VF) UnknownAccesses() uint64 { return vf.unknown.Load() }

// functionReset is VFCTRL.RST or a VF FLR: the VF's queues stop and
// return to their reset values (TDWBAL/H excepted: an FLR leaves them,
// which is why Linux's PF clears them on VF_RESET), its interrupt
// registers clear, and notify records the event in PFVFLRE.
func (vf *VF) functionReset(notify bool) {
	p := vf.pf
	qpp := p.vfQueues()
	for i := 0; i < qpp; i++ {
		q := vf.index*qpp + i
		if q >= NumQueues {
			break
		}
		p.writeRXDCTL(q, 0)
		p.writeTXDCTL(q, 0)
		for _, off := range []uint32{rqRDBAL, rqRDBAH, rqRDLEN, rqDCA, rqRDH, rqSRRCTL, rqRDT, rqRSCCTL} {
			o := rxQueueBase(q) + off
			p.setReg(o, bar0Map.reset[o/4])
		}
		for _, off := range []uint32{tqTDBAL, tqTDBAH, tqTDLEN, tqDCA, tqTDH, tqTDT} {
			o := txQueueBase(q) + off
			p.setReg(o, bar0Map.reset[o/4])
		}
	}
	if vf.index < numPools {
		p.setReg(regPSRTYPE0+4*uint32(vf.index), 0)
	}
	vf.irqMu.Lock()
	vf.eicr, vf.eims, vf.eiac, vf.eiam = 0, 0, 0, 0
	vf.irqMu.Unlock()
	for i := range vf.ivar {
		vf.ivar[i].Store(0)
	}
	vf.misc.Store(0)
	vf.pending.Store(0)
	if notify {
		p.vfResetEvent(vf.index)
	}
}

// decodes reports whether the VF answers memory accesses: the function
// exists, its memory space is enabled, and the PF's SR-IOV control has
// VF MSE.
func (vf *VF) decodes() bool {
	return !vf.gone.Load() && vf.cfg.memoryEnabled() && !vf.pf.closed.Load() &&
		vf.pf.sriovCfg16(sriovCtrl)&sriovCtrlMSE != 0
}

// vfBAR is a VF's BAR 0.
type vfBAR VF

// Len implements vfio.BAR.
func (b *vfBAR) Len() int { return VFBARSize }

// queueReg maps a VF queue register to the PF's register for the aliased
// queue; ok is false outside the VF's queues or for offsets the block
// does not define.
func (vf *VF) queueReg(off uint32) (uint32, bool) {
	p := vf.pf
	qpp := p.vfQueues()
	var base, r uint32
	var rx bool
	switch {
	case off >= vfRXQ0 && off < vfRXQ0+0x40*vfMaxQueues:
		base, r, rx = (off-vfRXQ0)/0x40, off%0x40, true
	case off >= vfTXQ0 && off < vfTXQ0+0x40*vfMaxQueues:
		base, r = (off-vfTXQ0)/0x40, off%0x40
	default:
		return 0, false
	}
	q := vf.index*qpp + int(base)
	if int(base) >= qpp || q >= NumQueues {
		return 0, false
	}
	if rx {
		switch r {
		case rqRDBAL, rqRDBAH, rqRDLEN, rqDCA, rqRDH, rqSRRCTL, rqRDT, rqRXDCTL, rqRSCCTL:
			return rxQueueBase(q) + r, true
		}
		return 0, false
	}
	switch r {
	case tqTDBAL, tqTDBAH, tqTDLEN, tqDCA, tqTDH, tqTDT, tqTXDCTL, tqTDWBAL, tqTDWBAH:
		return txQueueBase(q) + r, true
	}
	return 0, false
}

// Read32 implements vfio.BAR.
func (b *vfBAR) Read32(off uint32) uint32 {
	vf := (*VF)(b)
	p := vf.pf
	if !vf.decodes() {
		return 0xFFFFFFFF
	}
	if off >= VFBARSize || off%4 != 0 {
		vf.unknown.Add(1)
		return 0
	}
	now := p.tick()
	switch {
	case off == vfCTRL, off == vfSTATUS, off == vfEIMC, off == vfRXMEMWRAP:
		return 0
	case off == vfLINKS:
		return p.readSpecial(regLINKS, now) // the port's LINKS
	case off == vfFRTIMER:
		return uint32(now)
	case off == vfEICR:
		vf.irqMu.Lock()
		v := vf.eicr
		vf.eicr = 0
		vf.irqMu.Unlock()
		return v
	case off == vfEICS:
		vf.irqMu.Lock()
		defer vf.irqMu.Unlock()
		return vf.eicr
	case off == vfEIMS:
		vf.irqMu.Lock()
		defer vf.irqMu.Unlock()
		return vf.eims
	case off == vfEIAC:
		vf.irqMu.Lock()
		defer vf.irqMu.Unlock()
		return vf.eiac
	case off == vfEIAM:
		vf.irqMu.Lock()
		defer vf.irqMu.Unlock()
		return vf.eiam
	case off >= vfIVAR0 && off < vfIVAR0+16:
		return vf.ivar[(off-vfIVAR0)/4].Load()
	case off == vfIVARMISC:
		return vf.misc.Load()
	case off >= vfRSCINT0 && off < vfRSCINT0+16:
		return vf.rscint[(off-vfRSCINT0)/4].Load()
	case off >= vfEITR0 && off < vfEITR0+12:
		return vf.eitr[(off-vfEITR0)/4].Load()
	case off >= vfMBMEM && off < vfMBMEM+64:
		return p.reg(regPFMBMEM0 + 64*uint32(vf.index) + off - vfMBMEM)
	case off == vfMAILBOX:
		return p.readVFMailbox(vf.index)
	case off == vfPSRTYPE:
		return p.reg(regPSRTYPE0 + 4*uint32(vf.index))
	case off == vfGPRC:
		return uint32(vf.st.rxPackets.Load())
	case off == vfGORCLSB:
		return uint32(vf.st.rxBytes.Load())
	case off == vfGORCMSB:
		return uint32(vf.st.rxBytes.Load()>>32) & 0xF
	case off == vfMPRC:
		return uint32(vf.st.rxMulticast.Load())
	case off == vfGPTC:
		return uint32(vf.st.txPackets.Load())
	case off == vfGOTCLSB:
		return uint32(vf.st.txBytes.Load())
	case off == vfGOTCMSB:
		return uint32(vf.st.txBytes.Load()>>32) & 0xF
	}
	if r, ok := vf.queueReg(off); ok {
		return (*bar)(p).Read32(r)
	}
	vf.unknown.Add(1)
	return 0
}

// Write32 implements vfio.BAR.
func (b *vfBAR) Write32(off uint32, v uint32) {
	vf := (*VF)(b)
	p := vf.pf
	if !vf.decodes() {
		return
	}
	if off >= VFBARSize || off%4 != 0 {
		vf.unknown.Add(1)
		return
	}
	switch {
	case off == vfCTRL:
		if v&vfCtrlRST != 0 {
			vf.functionReset(true) // self-clearing: done when the write returns
		}
		return
	case off == vfSTATUS, off == vfLINKS, off == vfFRTIMER, off == vfRXMEMWRAP,
		off == vfGPRC, off == vfGORCLSB, off == vfGORCMSB, off == vfMPRC,
		off == vfGPTC, off == vfGOTCLSB, off == vfGOTCMSB:
		return // read-only
	case off == vfEICR:
		vf.irqMu.Lock()
		vf.eicr &^= v
		vf.irqMu.Unlock()
		return
	case off == vfEICS:
		vf.raise(v & 7)
		return
	case off == vfEIMS:
		vf.irqMu.Lock()
		vf.eims |= v & 7
		vf.deliverLocked(v & 7)
		vf.irqMu.Unlock()
		return
	case off == vfEIMC:
		vf.irqMu.Lock()
		vf.eims &^= v
		vf.irqMu.Unlock()
		return
	case off == vfEIAC:
		vf.irqMu.Lock()
		vf.eiac = v & 7
		vf.irqMu.Unlock()
		return
	case off == vfEIAM:
		vf.irqMu.Lock()
		vf.eiam = v & 7
		vf.irqMu.Unlock()
		return
	case off >= vfIVAR0 && off < vfIVAR0+16:
		vf.ivar[(off-vfIVAR0)/4].Store(v)
		return
	case off == vfIVARMISC:
		vf.misc.Store(v)
		return
	case off >= vfRSCINT0 && off < vfRSCINT0+16:
		vf.rscint[(off-vfRSCINT0)/4].Store(v)
		return
	case off >= vfEITR0 && off < vfEITR0+12:
		vf.eitr[(off-vfEITR0)/4].Store(v)
		return
	case off >= vfMBMEM && off < vfMBMEM+64:
		p.setReg(regPFMBMEM0+64*uint32(vf.index)+off-vfMBMEM, v)
		return
	case off == vfMAILBOX:
		p.writeVFMailbox(vf.index, v)
		return
	case off == vfPSRTYPE:
		p.setReg(regPSRTYPE0+4*uint32(vf.index), v)
		return
	}
	if r, ok := vf.queueReg(off); ok {
		(*bar)(p).Write32(r, v)
		return
	}
	vf.unknown.Add(1)
}

// queueCause notes the interrupt VTIVAR assigns to the VF's RX (tx
// false) or TX queue i; the engine delivers it at the end of its pass.
// VTIVAR has the PF IVAR's layout: queue 2n in bits 7:0 (RX) and 15:8
// (TX) of register n, queue 2n+1 in 23:16 and 31:24; bit 7 of an entry
// is valid, bits 1:0 the vector (0-2).
func (vf *VF) queueCause(i int, tx bool) {
	e := vf.ivar[i/2].Load() >> (16 * uint(i%2))
	if tx {
		e >>= 8
	}
	if e&ivarValid == 0 || e&3 >= vfMSIXVector {
		return
	}
	vf.pending.Or(1 << (e & 3))
	vf.pf.sriov.pending.Store(true)
}

// mailboxInterrupt raises the VF's mailbox vector (VTIVAR_MISC).
func (vf *VF) mailboxInterrupt() {
	if e := vf.misc.Load(); e&ivarValid != 0 && e&3 < vfMSIXVector {
		vf.raise(1 << (e & 3))
	}
}

// raise sets causes in VTEICR and signals the MSI-X vectors of those
// VTEIMS enables.
func (vf *VF) raise(causes uint32) {
	vf.irqMu.Lock()
	vf.eicr |= causes
	vf.deliverLocked(causes)
	vf.irqMu.Unlock()
}

func (vf *VF) deliverLocked(causes uint32) {
	fire := causes & vf.eicr & vf.eims
	if fire == 0 {
		return
	}
	fds := vf.irqFDs[vfio.IRQMSIX]
	for c := fire; c != 0; c &= c - 1 {
		if fd := vectorFD(fds, bits.TrailingZeros32(c)); fd >= 0 {
			if _, err := unix.Write(fd, eventfdOne[:]); err == nil {
				vf.interrupts.Add(1)
			}
		}
	}
	vf.eicr &^= fire & vf.eiac
	vf.eims &^= fire & vf.eiam
}

// vfIRQs implements vfio.IRQs for a VF: MSI-X only.
type vfIRQs struct{ vf *VF }

func (r vfIRQs) Count(kind vfio.IRQKind) (int, error) {
	switch kind {
	case vfio.IRQMSIX:
		return vfMSIXVector, nil
	case vfio.IRQErr, vfio.IRQReq:
		return 1, nil
	}
	return 0, fmt.Errorf("sim: VF interrupt index %d: %w", kind, vfio.ErrNotSupported)
}

func (r vfIRQs) Enable(kind vfio.IRQKind, fds []int) error {
	n, err := r.Count(kind)
	if err != nil {
		return err
	}
	if len(fds) > n {
		return fmt.Errorf("sim: %d eventfds for %v, which has %d vectors: %w", len(fds), kind, n, unix.EINVAL)
	}
	r.vf.irqMu.Lock()
	defer r.vf.irqMu.Unlock()
	r.vf.irqFDs[kind] = append([]int(nil), fds...)
	return nil
}

func (r vfIRQs) Disable(kind vfio.IRQKind) error {
	if _, err := r.Count(kind); err != nil {
		return err
	}
	r.vf.irqMu.Lock()
	defer r.vf.irqMu.Unlock()
	delete(r.vf.irqFDs, kind)
	return nil
}
