package sim

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// SR-IOV on the PF: the SR-IOV extended capability in configuration
// space, the VFs it creates (vf.go), which VF owns which PF queue, and
// the DMA domain a queue's DMA goes through. The capability's values are
// those an 82599 port reports (lspci -vvv of an 82599ES: Initial VFs 64,
// Total VFs 64, VF offset 128, stride 2, VF device ID 10ed, supported
// page sizes 0x553, VF BARs 0 and 3, both 64-bit). Linux's ixgbe caps
// what it enables at 63 (IXGBE_MAX_VFS_DRV_LIMIT, one pool kept for the
// PF); that is the driver's limit, not the capability's.

// Extended capabilities: ARI at 0x100 (so the walk from 0x100 finds
// something), then SR-IOV.
const (
	extCapARI   = 0x100
	extCapSRIOV = 0x160

	extCapIDARI   = 0x000E
	extCapIDSRIOV = 0x0010

	// Registers of the SR-IOV capability, from its start.
	sriovCtrl     = 0x08 // 16 bits: VF Enable, VF Migration Enable, Migration Interrupt Enable, VF MSE, ARI Capable Hierarchy
	sriovStatus   = 0x0A
	sriovInitial  = 0x0C
	sriovTotal    = 0x0E
	sriovNumVFs   = 0x10
	sriovFDL      = 0x12
	sriovOffset   = 0x14
	sriovStride   = 0x16
	sriovDeviceID = 0x1A
	sriovPageSup  = 0x1C
	sriovPageSys  = 0x20
	sriovBAR0     = 0x24

	sriovCtrlVFE = 1 << 0 // VF Enable
	sriovCtrlMSE = 1 << 3 // VF Memory Space Enable

	// TotalVFs is what the 82599's SR-IOV capability reports.
	TotalVFs = 64
	// DeviceIDVF is the 82599 VF's device ID.
	DeviceIDVF = 0x10ED
	// FirstVFOffset and VFStride place VF i at routing ID PF + 128 + 2i
	// (PF 0000:03:00.0's VF 0 is 0000:03:10.0, VF 1 0000:03:10.2).
	FirstVFOffset = 128
	VFStride      = 2
)

// Registers of the PF that SR-IOV adds behaviour to.
const (
	regGCREXT     = 0x11050
	regPFMAILBOX0 = 0x04B00
	regPFMBMEM0   = 0x13000
	regPFMBICR0   = 0x00710
	regPFMBIMR0   = 0x00720
	regPFVFLRE0   = 0x00600 // VFs 0-31
	regPFVFLRE1   = 0x001C0 // VFs 32-63
	regPFVFLREC0  = 0x00700

	ctrlExtPFRSTD = 1 << 14
	eicrMailbox   = 1 << 19
)

// sriovState is the PF's SR-IOV side: the VFs (nil slice when VF Enable
// is clear) and the 64 mailboxes, which exist in the silicon whether or
// not a VF is enabled.
type sriovState struct {
	mu      sync.Mutex // serialises enabling and disabling
	vfs     atomic.Pointer[[]*VF]
	mbx     [numPools]atomic.Uint32 // VFMAILBOX state bits (mailbox.go)
	pending atomic.Bool             // a VF has queue interrupt causes to deliver
}

func (p *PF) initSRIOV() {
	c := &p.cfg
	le := binary.LittleEndian
	b, w := c.b[:], c.writable[:]
	le.PutUint32(b[extCapARI:], extCapIDARI|1<<16|extCapSRIOV<<20)
	le.PutUint32(b[extCapARI+4:], 1<<8) // next function: 1 (the second port)
	s := b[extCapSRIOV:]
	le.PutUint32(s, extCapIDSRIOV|1<<16)
	le.PutUint16(s[sriovInitial:], TotalVFs)
	le.PutUint16(s[sriovTotal:], TotalVFs)
	le.PutUint16(s[sriovOffset:], FirstVFOffset)
	le.PutUint16(s[sriovStride:], VFStride)
	le.PutUint16(s[sriovDeviceID:], DeviceIDVF)
	le.PutUint32(s[sriovPageSup:], 0x553)
	le.PutUint32(s[sriovPageSys:], 1)
	le.PutUint32(s[sriovBAR0:], 0xC)    // VF BAR 0: 64-bit, prefetchable
	le.PutUint32(s[sriovBAR0+12:], 0xC) // VF BAR 3
	ws := w[extCapSRIOV:]
	le.PutUint16(ws[sriovCtrl:], 0x1F)
	le.PutUint16(ws[sriovNumVFs:], 0xFFFF)
	le.PutUint32(ws[sriovPageSys:], 0xFFFFFFFF)
	for _, bar := range []int{sriovBAR0, sriovBAR0 + 12} {
		le.PutUint32(ws[bar:], ^uint32(VFBARSize-1)&^0xF)
		le.PutUint32(ws[bar+4:], 0xFFFFFFFF)
	}
	c.wrote = p.sriovConfigWritten
}

func (p *PF) sriovCfg16(off int) uint16 {
	v, _ := p.cfg.read(extCapSRIOV+off, 2)
	return uint16(v)
}

// sriovConfigWritten acts on VF Enable: setting it creates NumVFs VFs
// (as pci_enable_sriov does through sysfs sriov_numvfs), clearing it
// removes them.
func (p *PF) sriovConfigWritten(off, n int) {
	if off+n <= extCapSRIOV+sriovCtrl || off > extCapSRIOV+sriovCtrl+1 {
		return
	}
	s := &p.sriov
	s.mu.Lock()
	defer s.mu.Unlock()
	enable := p.sriovCfg16(sriovCtrl)&sriovCtrlVFE != 0
	cur := s.vfs.Load()
	switch {
	case enable && cur == nil:
		num := int(min(p.sriovCfg16(sriovNumVFs), TotalVFs))
		vfs := make([]*VF, num)
		for i := range vfs {
			vfs[i] = newVF(p, i)
		}
		s.vfs.Store(&vfs)
	case !enable && cur != nil:
		s.vfs.Store(nil)
		for _, vf := range *cur {
			vf.functionReset(false)
			vf.gone.Store(true)
		}
	}
}

// EnableVFs creates n VFs as Linux's sriov_configure does through sysfs:
// NumVFs, then VF Enable and VF MSE in the SR-IOV control register.
func (p *PF) EnableVFs(n int) error {
	if n < 1 || n > TotalVFs {
		return fmt.Errorf("sim: %d VFs: the 82599 offers 1 to %d: %w", n, TotalVFs, unix.EINVAL)
	}
	if cur := p.sriov.vfs.Load(); cur != nil {
		return fmt.Errorf("sim: %d VFs already enabled; disable them first: %w", len(*cur), unix.EBUSY)
	}
	cfg := p.Config()
	if err := cfg.Write16(extCapSRIOV+sriovNumVFs, uint16(n)); err != nil {
		return err
	}
	return cfg.Write16(extCapSRIOV+sriovCtrl, p.sriovCfg16(sriovCtrl)|sriovCtrlVFE|sriovCtrlMSE)
}

// DisableVFs clears VF Enable: every VF's queues stop and its device
// goes away (its BAR reads all ones).
func (p *PF) DisableVFs() error {
	cfg := p.Config()
	if err := cfg.Write16(extCapSRIOV+sriovCtrl, p.sriovCfg16(sriovCtrl)&^(sriovCtrlVFE|sriovCtrlMSE)); err != nil {
		return err
	}
	return cfg.Write16(extCapSRIOV+sriovNumVFs, 0)
}

// NumVFs is the number of VFs enabled.
func (p *PF) NumVFs() int {
	if cur := p.sriov.vfs.Load(); cur != nil {
		return len(*cur)
	}
	return 0
}

// VF returns VF i (a vfio.Device of its own), or nil when it is not
// enabled.
func (p *PF) VF(i int) *VF {
	cur := p.sriov.vfs.Load()
	if cur == nil || i < 0 || i >= len(*cur) {
		return nil
	}
	return (*cur)[i]
}

// ResetVF is a VF reset from outside the VF, as when the host resets it
// (a function-level reset through sysfs, or the host PF driver
// restarting it): the VF's queues stop and return to their reset values,
// its interrupt registers clear, the PF sees the event in PFVFLRE, and
// the VF's mailbox reports RSTD (reset done, clear on read) so a VF
// driver checking for a reset finds one. That RSTD is raised by this
// event is inferred (the datasheet text was not at hand); a VF driver
// that also watches for a control message without CTS will see one from
// the host's PF driver (sim/linuxpf Host.ResetVF).
func (p *PF) ResetVF(i int) error {
	vf := p.VF(i)
	if vf == nil {
		return fmt.Errorf("sim: VF %d is not enabled: %w", i, unix.ENODEV)
	}
	vf.functionReset(true)
	m := &p.sriov.mbx[i]
	for {
		old := m.Load()
		if m.CompareAndSwap(old, old|vfmbRSTD) {
			break
		}
	}
	return nil
}

// vfQueues is the number of queues each pool (VF) owns, from
// GCR_EXT.VT_Mode (01b: 16 pools of 8, 10b: 32 of 4, 11b: 64 of 2).
// 00b (not set) is taken as 64 pools of 2.
func (p *PF) vfQueues() int {
	switch p.reg(regGCREXT) & 3 {
	case 1:
		return 8
	case 2:
		return 4
	}
	return 2
}

// queueVF returns the VF owning PF queue q and the queue's index in the
// VF's BAR, or nil: VF v owns queues v*qpp .. v*qpp+qpp-1.
func (p *PF) queueVF(q int) (*VF, int) {
	cur := p.sriov.vfs.Load()
	if cur == nil {
		return nil, 0
	}
	qpp := p.vfQueues()
	v := q / qpp
	if v >= len(*cur) {
		return nil, 0
	}
	return (*cur)[v], q % qpp
}

// dmaDomain is the IOMMU domain queue q's DMA goes through: the owning
// VF's (a VF is a requester of its own), else the PF's. ok is false when
// the owning VF has bus mastering off.
func (p *PF) dmaDomain(q int) (*IOMMU, bool) {
	vf, _ := p.queueVF(q)
	if vf == nil {
		return &p.iommu, true
	}
	return &vf.iommu, vf.cfg.busMaster()
}

// countVFRX counts a frame written to a VF's queue in the VF's
// statistics (VFGPRC, VFGORC, VFMPRC: multicast other than broadcast,
// inferred).
func (p *PF) countVFRX(q int, out []byte) {
	vf, _ := p.queueVF(q)
	if vf == nil {
		return
	}
	vf.st.rxPackets.Add(1)
	vf.st.rxBytes.Add(uint64(len(out)))
	if out[0]&1 != 0 && !isBroadcast(out) {
		vf.st.rxMulticast.Add(1)
	}
}

// countVFTX counts a frame a VF's queue sent (VFGPTC, VFGOTC).
func (p *PF) countVFTX(q int, out []byte) {
	vf, _ := p.queueVF(q)
	if vf == nil {
		return
	}
	vf.st.txPackets.Add(1)
	vf.st.txBytes.Add(uint64(len(out)))
}

// deliverVFCauses raises the queue interrupt causes the engines noted for
// VFs during a pass.
func (p *PF) deliverVFCauses() {
	if !p.sriov.pending.Load() || !p.sriov.pending.Swap(false) {
		return
	}
	cur := p.sriov.vfs.Load()
	if cur == nil {
		return
	}
	for _, vf := range *cur {
		if c := vf.pending.Swap(0); c != 0 {
			vf.raise(c)
		}
	}
}

// vfAddress is the PCI address of VF i of the PF at pf: routing ID
// PF + FirstVFOffset + i*VFStride.
func vfAddress(pf string, i int) string {
	var dom, bus, dev, fn int
	if _, err := fmt.Sscanf(pf, "%x:%x:%x.%x", &dom, &bus, &dev, &fn); err != nil {
		return fmt.Sprintf("%s-vf%d", pf, i)
	}
	rid := bus<<8 | dev<<3 | fn
	rid += FirstVFOffset + i*VFStride
	return fmt.Sprintf("%04x:%02x:%02x.%x", dom, rid>>8&0xFF, rid>>3&0x1F, rid&7)
}
