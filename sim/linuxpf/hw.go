package linuxpf

import (
	"fmt"

	"github.com/zcnet/zcnet/vfio"
)

// PF registers and bits (ixgbe_type.h).
const (
	regCTRL      = 0x00000
	regCTRLEXT   = 0x00018
	regEICR      = 0x00800
	regEIMC      = 0x00888
	regGPIE      = 0x00898
	regPFVFLRE0  = 0x00600
	regPFVFLRE1  = 0x001C0
	regPFVFLREC  = 0x00700
	regPFMBICR   = 0x00710
	regPFMBIMR   = 0x00720
	regRDRXCTL   = 0x02F00
	regPFQDE     = 0x02F04
	regRXCTRL    = 0x03000
	regHLREG0    = 0x04240
	regMAXFRS    = 0x04268
	regLINKS     = 0x042A4
	regRTTDCS    = 0x04900
	regDMATXCTL  = 0x04A80
	regPFMAILBOX = 0x04B00
	regFCTRL     = 0x05080
	regVLNCTRL   = 0x05088
	regMCSTCTRL  = 0x05090
	regPFVTCTL   = 0x051B0
	regPFVFRE    = 0x051E0
	regMTA       = 0x05200
	regPFVMVIR   = 0x08000
	regPFVFTE    = 0x08110
	regMTQC      = 0x08120
	regPFVFSPOOF = 0x08200
	regPFDTXGSWC = 0x08220
	regVMECM     = 0x08790
	regVFTA      = 0x0A000
	regRAL       = 0x0A200
	regMPSAR     = 0x0A600
	regPSRTYPE   = 0x0EA00
	regRETA      = 0x0EB00
	regRSSRK     = 0x0EB80
	regMRQC      = 0x0EC80
	regPFVML2FLT = 0x0F000
	regPFVLVF    = 0x0F100
	regPFVLVFB   = 0x0F200
	regEEC       = 0x10010
	regPFMBMEM   = 0x13000
	regGCREXT    = 0x11050

	ctrlRST        = 1 << 26
	ctrlExtPFRSTD  = 1 << 14
	ctrlExtDrvLoad = 1 << 28
	eecARD         = 1 << 9
	rdrxctlDMAIDON = 1 << 3
	rdrxctlCRCStrp = 1 << 1
	rxctrlRXEN     = 1 << 0
	hlreg0TXCRCEN  = 1 << 0
	hlreg0RXCRCSTR = 1 << 1
	hlreg0JUMBOEN  = 1 << 2
	hlreg0TXPADEN  = 1 << 10
	rttdcsARBDIS   = 1 << 6
	dmatxctlTE     = 1 << 0
	linksUp        = 1 << 30
	fctrlBAM       = 1 << 10
	vlnctrlVFE     = 1 << 30
	mcstctrlMFE    = 1 << 2
	vtctlVTEna     = 1 << 0
	vtctlRplEn     = 1 << 30
	pfdtxgswcLBE   = 1 << 0
	rahAV          = 1 << 31
	vlvfVIEN       = 1 << 31

	vmolrAUPE  = 1 << 24
	vmolrROMPE = 1 << 25
	vmolrBAM   = 1 << 27
	vmolrMPE   = 1 << 28

	qdeEnable   = 1 << 0
	qdeHideVLAN = 1 << 1
	qdeWrite    = 1 << 16

	pfmbSTS = 1 << 0
	pfmbACK = 1 << 1
	pfmbPFU = 1 << 3

	gpieVTMode32 = 2 << 14
	gpieVTMode64 = 3 << 14

	numRAR = 128
	numVLV = 64

	extCapIDSRIOV = 0x0010
)

func (h *Host) rd(off uint32) uint32     { return h.bar.Read32(off) }
func (h *Host) wr(off uint32, v uint32)  { h.bar.Write32(off, v) }
func (h *Host) set(off uint32, v uint32) { h.wr(off, h.rd(off)|v) }
func (h *Host) clr(off uint32, v uint32) { h.wr(off, h.rd(off)&^v) }

// bit64 sets or clears bit n of a register pair holding 64 pool bits.
func (h *Host) bit64(base uint32, n int, on bool) {
	r := base + 4*uint32(n/32)
	if on {
		h.set(r, 1<<uint(n%32))
	} else {
		h.clr(r, 1<<uint(n%32))
	}
}

// pfPool is the PF's own pool: VMDQ_P(0) = num_vfs.
func (h *Host) pfPool() int { return len(h.vfs) }

// bringUp is ixgbe_reset + ixgbe_configure + ixgbe_up_complete in SR-IOV
// mode, then pci_enable_sriov through the capability.
func (h *Host) bringUp() error {
	if err := vfio.EnableBusMaster(h.cfg); err != nil {
		return err
	}
	h.wr(regEIMC, 0x7FFFFFFF)
	h.wr(regCTRL, ctrlRST)
	if !h.poll(regCTRL, ctrlRST, 0) || !h.poll(regEEC, eecARD, eecARD) || !h.poll(regRDRXCTL, rdrxctlDMAIDON, rdrxctlDMAIDON) {
		return fmt.Errorf("linuxpf: the PF did not come out of reset")
	}
	h.wr(regEIMC, 0x7FFFFFFF)
	h.rd(regEICR)
	lo, hi := h.rd(regRAL), h.rd(regRAL+4)
	h.pfMAC = [6]byte{byte(lo), byte(lo >> 8), byte(lo >> 16), byte(lo >> 24), byte(hi), byte(hi >> 8)}
	for i := uint32(1); i < numRAR; i++ {
		h.wr(regRAL+8*i, 0)
		h.wr(regRAL+8*i+4, 0)
	}
	for i := uint32(0); i < 2*numRAR; i++ {
		h.wr(regMPSAR+4*i, 0)
	}
	for i := uint32(0); i < 128; i++ {
		h.wr(regMTA+4*i, 0)
		h.wr(regVFTA+4*i, 0)
	}
	pf := h.pfPool()
	h.bit64(regMPSAR, pf, true) // RAR 0 (the PF's address) in the PF's pool

	// The pool layout: MRQC VMDq+RSS, MTQC, GCR_EXT and GPIE agreeing
	// (ixgbe_setup_mrqc, ixgbe_setup_mtqc, ixgbe_configure_virtualization).
	mrqc, mtqc, gcr, gpie := uint32(0xB), uint32(1<<1|1<<2), uint32(3), uint32(gpieVTMode64)
	if h.qpp == 4 {
		mrqc, mtqc, gcr, gpie = 0xA, 1<<1|2<<2, 2, gpieVTMode32
	}
	h.set(regRTTDCS, rttdcsARBDIS)
	h.wr(regMTQC, mtqc)
	h.clr(regRTTDCS, rttdcsARBDIS)
	h.wr(regMRQC, mrqc)
	h.wr(regGCREXT, gcr)
	h.wr(regGPIE, h.rd(regGPIE)&^(3<<14)|gpie)
	// RSS: the redirection table spreads over a pool's queues, a key.
	for i := uint32(0); i < 32; i++ {
		var w uint32
		for j := uint32(0); j < 4; j++ {
			w |= ((4*i + j) % uint32(h.qpp)) << (8 * j)
		}
		h.wr(regRETA+4*i, w)
	}
	for i := uint32(0); i < 10; i++ {
		h.wr(regRSSRK+4*i, 0x6d5a6d5a^i*0x01010101)
	}
	h.wr(regPFVTCTL, vtctlVTEna|uint32(pf)<<7|vtctlRplEn)
	h.wr(regPFVFRE, 0)
	h.wr(regPFVFRE+4, 0)
	h.wr(regPFVFTE, 0)
	h.wr(regPFVFTE+4, 0)
	h.bit64(regPFVFRE, pf, true)
	h.bit64(regPFVFTE, pf, true)
	h.wr(regPFDTXGSWC, pfdtxgswcLBE)
	h.wr(regPFVML2FLT+4*uint32(pf), vmolrAUPE|vmolrBAM|vmolrROMPE)
	for v := range h.vfs {
		// ixgbe_configure_virtualization: anti-spoofing per the VF's
		// setting (on by default).
		h.setAntiSpoof(v, h.vfs[v].spoofchk)
	}
	// Filters: broadcast, multicast hash on, VLAN filtering with the PF
	// in VLAN 0.
	h.wr(regFCTRL, fctrlBAM)
	h.wr(regMCSTCTRL, mcstctrlMFE) // MO 0: mc_filter_type 0
	h.wr(regVLNCTRL, 0x8100|vlnctrlVFE)
	_ = h.setVFTA(0, pf, true)
	// MAC, receive, transmit.
	maxFrame := uint32(h.conf.MTU + 18)
	h.set(regHLREG0, hlreg0TXCRCEN|hlreg0RXCRCSTR|hlreg0JUMBOEN|hlreg0TXPADEN)
	h.wr(regMAXFRS, maxFrame<<16)
	h.set(regRDRXCTL, rdrxctlCRCStrp)
	h.set(regDMATXCTL, dmatxctlTE)
	h.set(regRXCTRL, rxctrlRXEN)
	// The mailbox: every VF may interrupt; PFRSTD tells them the PF is up.
	h.wr(regPFMBIMR, 0xFFFFFFFF)
	h.wr(regPFMBIMR+4, 0xFFFFFFFF)
	h.set(regCTRLEXT, ctrlExtPFRSTD|ctrlExtDrvLoad)
	h.linkUp = h.rd(regLINKS)&linksUp != 0
	return h.enableSRIOV()
}

// enableSRIOV writes NumVFs, then VF Enable and VF MSE, into the SR-IOV
// capability, as pci_enable_sriov does.
func (h *Host) enableSRIOV() error {
	pos := 0x100
	for pos != 0 {
		hdr, err := h.cfg.Read32(pos)
		if err != nil {
			return err
		}
		if hdr&0xFFFF == extCapIDSRIOV {
			break
		}
		pos = int(hdr >> 20)
	}
	if pos == 0 {
		return ErrNoSRIOV
	}
	total, err := h.cfg.Read16(pos + 0x0E)
	if err != nil {
		return err
	}
	if int(total) < len(h.vfs) {
		return fmt.Errorf("linuxpf: %d VFs asked, the device offers %d", len(h.vfs), total)
	}
	if err := h.cfg.Write16(pos+0x10, uint16(len(h.vfs))); err != nil {
		return err
	}
	ctl, err := h.cfg.Read16(pos + 0x08)
	if err != nil {
		return err
	}
	return h.cfg.Write16(pos+0x08, ctl|1|1<<3)
}

// poll reads reg until (reg & mask) == want.
func (h *Host) poll(reg, mask, want uint32) bool {
	for i := 0; i < 100000; i++ {
		if h.rd(reg)&mask == want {
			return true
		}
	}
	return false
}

// Mailbox primitives (ixgbe_mbx.c, the PF side).

// checkForBit tests and clears VF v's VFREQ (shift 0) or VFACK (16) bit
// in PFMBICR.
func (h *Host) checkForBit(v int, shift uint) bool {
	r := regPFMBICR + 4*uint32(v/16)
	bit := uint32(1) << (shift + uint(v%16))
	if h.rd(r)&bit == 0 {
		return false
	}
	h.wr(r, bit)
	return true
}

// checkForRst tests and clears VF v's reset event (PFVFLRE, cleared
// through PFVFLREC).
func (h *Host) checkForRst(v int) bool {
	lre := uint32(regPFVFLRE0)
	if v >= 32 {
		lre = regPFVFLRE1
	}
	bit := uint32(1) << uint(v%32)
	if h.rd(lre)&bit == 0 {
		return false
	}
	h.wr(regPFVFLREC+4*uint32(v/32), bit)
	return true
}

func (h *Host) lock(v int) bool {
	r := regPFMAILBOX + 4*uint32(v)
	h.wr(r, pfmbPFU)
	return h.rd(r)&pfmbPFU != 0
}

// readMbx takes the lock, copies the 16 words and acknowledges (which
// releases the lock).
func (h *Host) readMbx(v int) ([mbxWords]uint32, bool) {
	var msg [mbxWords]uint32
	if !h.lock(v) {
		return msg, false
	}
	for i := range msg {
		msg[i] = h.rd(regPFMBMEM + 64*uint32(v) + 4*uint32(i))
	}
	h.wr(regPFMAILBOX+4*uint32(v), pfmbACK)
	return msg, true
}

// writeMbx takes the lock, flushes pending request and ack bits (as
// Linux does, overwriting the buffer), writes msg and sets STS (which
// releases the lock).
func (h *Host) writeMbx(v int, msg []uint32) bool {
	if !h.lock(v) {
		return false
	}
	h.checkForBit(v, 0)
	h.checkForBit(v, 16)
	for i, w := range msg {
		h.wr(regPFMBMEM+64*uint32(v)+4*uint32(i), w)
	}
	h.wr(regPFMAILBOX+4*uint32(v), pfmbSTS)
	h.vfs[v].lastResp = msg[0]
	return true
}

// ping is ixgbe_ping_vf: a control message, with CTS only while the VF
// is clear to send (without, it tells the VF to reset).
func (h *Host) ping(v int) {
	m := uint32(msgControl)
	if h.vfs[v].cts {
		m |= flagCTS
	}
	h.writeMbx(v, []uint32{m})
}
