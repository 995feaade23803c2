package sim

import "fmt"

// BAR0Size is the size of the 82599's register window (memory BAR 0).
const BAR0Size = 0x20000

const barWords = BAR0Size / 4

// Register offsets the model gives behaviour to. Families take an index;
// the layouts follow the datasheet (see /work/shared/reference).
const (
	regCTRL      = 0x00000
	regSTATUS    = 0x00008
	regCTRLEXT   = 0x00018
	regESDP      = 0x00020
	regFRTIMER   = 0x00048
	regEICR      = 0x00800
	regEICS      = 0x00808
	regEIAC      = 0x00810
	regEIMS      = 0x00880
	regEIMC      = 0x00888
	regEIAM      = 0x00890
	regGPIE      = 0x00898
	regIVAR0     = 0x00900
	regIVARMISC  = 0x00A00
	regRDRXCTL   = 0x02F00
	regRQSMR0    = 0x02300
	regRXCTRL    = 0x03000
	regHLREG0    = 0x04240
	regMAXFRS    = 0x04268
	regAUTOC     = 0x042A0
	regLINKS     = 0x042A4
	regAUTOC2    = 0x042A8
	regANLP1     = 0x042B0
	regDMATXCTL  = 0x04A80
	regDTXTCPFLL = 0x04A88
	regDTXTCPFLH = 0x04A8C
	regRXCSUM    = 0x05000
	regFCTRL     = 0x05080
	regVLNCTRL   = 0x05088
	regMCSTCTRL  = 0x05090
	regMTA0      = 0x05200
	regTQSM0     = 0x08600
	regSECRXCTRL = 0x08D00
	regSECRXSTAT = 0x08D04
	regSECTXSTAT = 0x08804
	regVFTA0     = 0x0A000
	regRAL0      = 0x0A200
	regRETA0     = 0x0EB00
	regRSSRK0    = 0x0EB80
	regMRQC      = 0x0EC80
	regPSRTYPE0  = 0x0EA00
	regMPSAR0    = 0x0A600
	regMTQC      = 0x08120
	regPFVTCTL   = 0x051B0
	regPFVFRE0   = 0x051E0
	regPFVFTE0   = 0x08110
	regPFVML2FLT = 0x0F000
	regPFVFSPOOF = 0x08200
	regPFDTXGSWC = 0x08220
	regPFVMVIR0  = 0x08000
	regPFVLVF0   = 0x0F100
	regPFVLVFB0  = 0x0F200
	regPFUTA0    = 0x0F400
	regVMECM0    = 0x08790
	regEEC       = 0x10010
	regEERD      = 0x10014
	regSWSM      = 0x10140
)

// Bits the model acts on.
const (
	ctrlGIODis = 1 << 2
	ctrlLRST   = 1 << 3
	ctrlRST    = 1 << 26

	statusGIO = 1 << 19

	eecPRES    = 1 << 8
	eecARD     = 1 << 9
	eecREQ     = 1 << 6
	eecGNT     = 1 << 7
	eecSize256 = 2 << 11 // 1 << (2+6) words

	eerdStart = 1 << 0
	eerdDone  = 1 << 1

	swsmSMBI = 1 << 0

	eicrQueueMask = 0xFFFF
	eicrRxMiss    = 1 << 17
	eicrLSC       = 1 << 20

	gpieMSIXMode = 1 << 4
	gpieOCD      = 1 << 5
	gpieEIAME    = 1 << 30

	ivarValid = 0x80

	rdrxctlCRCStrip = 1 << 1
	rdrxctlDMAIDone = 1 << 3

	rxctrlRXEN = 1 << 0

	hlreg0TXCRCEN    = 1 << 0
	hlreg0RXCRCSTRP  = 1 << 1
	hlreg0JUMBOEN    = 1 << 2
	hlreg0TXPADEN    = 1 << 10
	hlreg0LPBK       = 1 << 15
	hlreg0ResetValue = 0x08012C0B

	autocRestartAN = 1 << 12

	linksUp       = 1 << 30
	linksSpeed10G = 3 << 28
	linksANComp   = 1 << 31

	dmatxctlTE = 1 << 0

	rxcsumIPPCSE = 1 << 12
	rxcsumPCSD   = 1 << 13

	fctrlMPE = 1 << 8
	fctrlUPE = 1 << 9
	fctrlBAM = 1 << 10

	vlnctrlVFE = 1 << 30

	mcstctrlMFE = 1 << 2

	rahAV = 1 << 31

	secrxRDY = 1 << 0
	sectxRDY = 1 << 0
)

// regKind says how an offset behaves when the driver touches it.
type regKind uint8

const (
	kindUnknown regKind = iota // reads 0, writes dropped, both counted
	kindRW                     // plain storage
	kindRO                     // writes ignored; reads storage or a computed value
	kindW1C                    // writing 1 clears a bit
	kindStat                   // 32-bit statistics counter, clear on read
	kindStatLo                 // bits 31:0 of a 36-bit counter; reading latches and clears it
	kindStatHi                 // bits 35:32 of the value latched by the low read
	kindSpecial                // side effects, dispatched on the canonical offset
	kindRXDCTL                 // per-queue RX enable latch
	kindTXDCTL                 // per-queue TX enable latch
	kindKey                    // RSSRK: plain storage that invalidates the hash table
	kindRAR                    // RAL/RAH: plain storage that invalidates the address list
)

// regInfo describes one 32-bit word of BAR0.
type regInfo struct {
	kind  regKind
	idx   uint16 // queue index or statistics counter id
	canon uint32 // word index of the storage (differs from the offset for aliases)
}

// regMap is the fixed description of BAR0: what each word is, its reset value.
type regMap struct {
	info  [barWords]regInfo
	reset [barWords]uint32
}

var bar0Map = buildRegMap()

func (m *regMap) def(off uint32, n int, stride uint32, k regKind, reset uint32) {
	for i := 0; i < n; i++ {
		o := off + uint32(i)*stride
		m.set(o, regInfo{kind: k, idx: uint16(i), canon: o / 4}, reset)
	}
}

func (m *regMap) set(off uint32, ri regInfo, reset uint32) {
	w := off / 4
	if off%4 != 0 || w >= barWords {
		panic(fmt.Sprintf("sim: register offset %#x outside BAR0", off))
	}
	if m.info[w].kind != kindUnknown {
		panic(fmt.Sprintf("sim: register offset %#x defined twice", off))
	}
	m.info[w] = ri
	m.reset[w] = reset
}

// alias makes n words at aliasOff (stride aStride) reach the storage of the
// words at canonOff (stride cStride).
func (m *regMap) alias(aliasOff uint32, aStride uint32, canonOff uint32, cStride uint32, n int) {
	for i := 0; i < n; i++ {
		c := m.info[(canonOff+uint32(i)*cStride)/4]
		if c.kind == kindUnknown {
			panic(fmt.Sprintf("sim: alias of undefined register %#x", canonOff))
		}
		m.set(aliasOff+uint32(i)*aStride, c, 0)
	}
}

func (m *regMap) stat(off uint32, id statID) {
	m.set(off, regInfo{kind: kindStat, idx: uint16(id), canon: off / 4}, 0)
}

func (m *regMap) stats(off uint32, n int, stride uint32, first statID) {
	for i := 0; i < n; i++ {
		m.stat(off+uint32(i)*stride, first+statID(i))
	}
}

func (m *regMap) stat36(lo, hi uint32, id statID) {
	m.set(lo, regInfo{kind: kindStatLo, idx: uint16(id), canon: lo / 4}, 0)
	m.set(hi, regInfo{kind: kindStatHi, idx: uint16(id), canon: hi / 4}, 0)
}

// rxQueueBase is the start of RX queue n's register block: queues 0-63 in
// the low bank at 0x01000, queues 64-127 in the high bank at 0x0D000.
func rxQueueBase(n int) uint32 {
	if n < 64 {
		return 0x01000 + 0x40*uint32(n)
	}
	return 0x0D000 + 0x40*uint32(n-64)
}

func txQueueBase(n int) uint32 { return 0x06000 + 0x40*uint32(n) }

// Offsets inside a queue's register block.
const (
	rqRDBAL  = 0x00
	rqRDBAH  = 0x04
	rqRDLEN  = 0x08
	rqDCA    = 0x0C
	rqRDH    = 0x10
	rqSRRCTL = 0x14
	rqRDT    = 0x18
	rqRXDCTL = 0x28
	rqRSCCTL = 0x2C

	tqTDBAL  = 0x00
	tqTDBAH  = 0x04
	tqTDLEN  = 0x08
	tqDCA    = 0x0C
	tqTDH    = 0x10
	tqTDT    = 0x18
	tqTXDCTL = 0x28
	tqTDWBAL = 0x38
	tqTDWBAH = 0x3C
)

// NumQueues is the number of RX and TX queues the 82599 has and the model
// implements.
const NumQueues = 128

func buildRegMap() *regMap {
	m := new(regMap)
	rw := func(off uint32, reset uint32) { m.def(off, 1, 4, kindRW, reset) }
	ro := func(off uint32, reset uint32) { m.def(off, 1, 4, kindRO, reset) }
	sp := func(off uint32, reset uint32) { m.def(off, 1, 4, kindSpecial, reset) }
	arr := func(off uint32, n int, stride uint32, reset uint32) { m.def(off, n, stride, kindRW, reset) }

	// General control and the EEPROM/flash interface.
	sp(regCTRL, 0)
	sp(regSTATUS, statusGIO)
	sp(regCTRLEXT, 0) // PFRSTD reaches the VF mailboxes (mailbox.go)
	sp(regESDP, 0)
	rw(0x00200, 0) // LEDCTL
	sp(regFRTIMER, 0)
	sp(regEEC, eecPRES|eecARD|eecSize256)
	sp(regEERD, 0)
	rw(0x10018, 0) // EEWR
	rw(0x1001C, 0) // FLA
	sp(regSWSM, 0)
	ro(0x10148, 0) // FWSM: firmware reports no error
	ro(0x10150, 0) // FACTPS
	rw(0x10160, 0) // SW_FW_SYNC
	rw(0x11050, 0) // GCR_EXT
	rw(0x0425C, 0) // MSCA
	rw(0x04260, 0) // MSRWD

	// Interrupts.
	sp(regEICR, 0)
	sp(regEICS, 0)
	sp(regEIMS, 0)
	sp(regEIMC, 0)
	rw(regEIAC, 0)
	rw(regEIAM, 0)
	rw(regGPIE, 0)
	rw(0x00894, 0)            // EITRSEL
	arr(0x00A90, 2, 4, 0)     // EICS_EX (vectors >= 16 not modelled: storage only)
	arr(0x00AA0, 2, 4, 0)     // EIMS_EX
	arr(0x00AB0, 2, 4, 0)     // EIMC_EX
	arr(0x00AD0, 2, 4, 0)     // EIAM_EX
	arr(0x00820, 24, 4, 0)    // EITR 0-23
	arr(0x12300, 64-24, 4, 0) // EITR 24-63
	arr(regIVAR0, 64, 4, 0)   // IVAR
	rw(regIVARMISC, 0)

	// Flow control.
	arr(0x03200, 4, 4, 0) // FCTTV
	arr(0x03220, 8, 4, 0) // FCRTL
	arr(0x03260, 8, 4, 0) // FCRTH
	rw(0x032A0, 0)        // FCRTV
	rw(0x03D00, 0)        // FCCFG
	ro(0x0CE00, 0)        // TFCS
	rw(0x04294, 0)        // MFLCN

	// MAC and link.
	rw(regHLREG0, hlreg0ResetValue)
	ro(0x04244, 0) // HLREG1
	rw(regMAXFRS, 1518<<16)
	sp(regAUTOC, autocResetValue)
	sp(regLINKS, 0)
	rw(regAUTOC2, autoc2ResetValue)
	rw(0x042AC, 0) // AUTOC3
	sp(regANLP1, 0)
	ro(0x04324, 0) // LINKS2

	// Receive, global.
	rw(regRXCTRL, 0)
	sp(regRDRXCTL, rdrxctlResetValue)
	arr(0x03C00, 8, 4, 0x200<<10) // RXPBSIZE: 512 KB each
	ro(0x03190, 0)                // RXMEMWRAP
	rw(regRXCSUM, 0)
	rw(0x05008, 0) // RFCTL
	rw(regFCTRL, 0)
	rw(regVLNCTRL, 0x8100)
	rw(regMCSTCTRL, 0)
	arr(regMTA0, 128, 4, 0)
	m.def(regRAL0, 256, 4, kindRAR, 0) // RAL/RAH 0-127 interleaved; RAR(0) is loaded at reset
	arr(regMPSAR0, 256, 4, 0)          // MPSAR_LO/HI interleaved
	arr(regVFTA0, 128, 4, 0)
	arr(regPSRTYPE0, 64, 4, 0) // PSRTYPE
	rw(regMRQC, 0)
	rw(0x0EC70, 0) // RQTC
	arr(regRETA0, 32, 4, 0)
	m.def(regRSSRK0, 10, 4, kindKey, 0)
	arr(0x05128, 8, 4, 0)   // ETQF
	arr(0x0EC00, 8, 4, 0)   // ETQS
	arr(0x0E000, 128, 4, 0) // SAQF
	arr(0x0E200, 128, 4, 0) // DAQF
	arr(0x0E400, 128, 4, 0) // SDPQF
	arr(0x0E600, 128, 4, 0) // FTQF
	arr(0x0E800, 128, 4, 0) // L34T_IMIR
	rw(0x0EC30, 0)          // SYNQF
	rw(0x0581C, 0)          // VMD_CTL
	rw(0x02F40, 0)          // RXDSTATCTRL
	arr(regRQSMR0, 32, 4, 0)
	rw(0x02F04, 0) // PFQDE (indirect; storage only)
	rw(regSECRXCTRL, 0)
	sp(regSECRXSTAT, 0)
	rw(0x08800, 0) // SECTXCTRL
	sp(regSECTXSTAT, 0)
	rw(0x08808, 0) // SECTXBUFFAF
	rw(0x08810, 0) // SECTXMINIFG

	// Transmit, global.
	rw(regDMATXCTL, 0x8100<<16)
	rw(regDTXTCPFLL, 0x0FF60FF6)
	rw(regDTXTCPFLH, 0x00000FFF)
	rw(0x08100, 0)               // DTXMXSZRQ
	rw(regMTQC, 0)               // MTQC
	arr(0x0CC00, 8, 4, 0xA0<<10) // TXPBSIZE: 160 KB each
	rw(0x04950, 0x96)            // TXPBTHRESH(0)
	arr(0x04954, 7, 4, 0)        // TXPBTHRESH(1-7)
	rw(0x04900, 1<<22|1<<23)     // RTTDCS: BDPM, BPBFSM
	rw(0x04904, 0)               // RTTDQSEL
	rw(0x04908, 0)               // RTTDT1C
	rw(0x04984, 0)               // RTTBCNRC
	rw(0x0CD10, 0)               // MNGTXMAP
	arr(regTQSM0, 32, 4, 0)

	// Per-queue registers.
	for n := 0; n < NumQueues; n++ {
		b := rxQueueBase(n)
		q := uint16(n)
		set := func(off uint32, k regKind, reset uint32) {
			m.set(off, regInfo{kind: k, idx: q, canon: off / 4}, reset)
		}
		set(b+rqRDBAL, kindRW, 0)
		set(b+rqRDBAH, kindRW, 0)
		set(b+rqRDLEN, kindRW, 0)
		set(b+rqDCA, kindRW, 0xB200)
		set(b+rqRDH, kindRW, 0)
		set(b+rqSRRCTL, kindRW, 0x402)
		set(b+rqRDT, kindRW, 0)
		set(b+rqRXDCTL, kindRXDCTL, 0)
		set(b+rqRSCCTL, kindRW, 0)
		t := txQueueBase(n)
		set(t+tqTDBAL, kindRW, 0)
		set(t+tqTDBAH, kindRW, 0)
		set(t+tqTDLEN, kindRW, 0)
		set(t+tqDCA, kindRW, 0x2A00)
		set(t+tqTDH, kindRW, 0)
		set(t+tqTDT, kindRW, 0)
		set(t+tqTXDCTL, kindTXDCTL, 0)
		set(t+tqTDWBAL, kindRW, 0)
		set(t+tqTDWBAH, kindRW, 0)
	}

	// Virtualization: pools and the internal switch (pool.go, veb.go act
	// on these), and mailbox storage (no PF-side VF policy here).
	rw(regPFVTCTL, 0)                           // PFVTCTL
	arr(regPFVFRE0, 2, 4, 0)                    // PFVFRE
	arr(regPFVFTE0, 2, 4, 0)                    // PFVFTE
	m.def(regPFMAILBOX0, 64, 4, kindSpecial, 0) // PFMAILBOX (mailbox.go)
	arr(regPFMBMEM0, 1024, 4, 0)                // PFMBMEM (also the VFs' VFMBMEM)
	m.def(regPFMBICR0, 4, 4, kindW1C, 0)        // PFMBICR
	arr(regPFMBIMR0, 4, 4, 0)                   // PFMBIMR
	ro(regPFVFLRE0, 0)                          // PFVFLRE(0)
	ro(regPFVFLRE1, 0)                          // PFVFLRE(1)
	m.def(regPFVFLREC0, 2, 4, kindSpecial, 0)   // PFVFLREC: write 1 clears PFVFLRE (mailbox.go)
	arr(regPFVML2FLT, 64, 4, 0)                 // PFVML2FLT (VMOLR)
	arr(regPFVFSPOOF, 8, 4, 0)                  // PFVFSPOOF
	rw(regPFDTXGSWC, 0)                         // PFDTXGSWC
	arr(0x05180, 2, 4, 0)                       // PFVMTXSW (storage only)
	arr(regPFVMVIR0, 64, 4, 0)                  // PFVMVIR
	arr(regPFVLVF0, 64, 4, 0)                   // PFVLVF
	arr(regPFVLVFB0, 128, 4, 0)                 // PFVLVFB
	arr(regPFUTA0, 128, 4, 0)                   // PFUTA
	arr(regVMECM0, 2, 4, 0)                     // VMECM

	defineStats(m)

	// Aliases the datasheet documents for compatibility with the 82598 map.
	m.alias(0x05400, 4, regRAL0, 4, 32)                    // RAL/RAH 0-15
	m.alias(0x05480, 4, regPSRTYPE0, 4, 16)                // PSRTYPE 0-15
	m.alias(0x02100, 4, rxQueueBase(0)+rqSRRCTL, 0x40, 16) // SRRCTL 0-15
	m.alias(0x02200, 4, rxQueueBase(0)+rqDCA, 0x40, 16)    // DCA_RXCTRL 0-15
	m.alias(0x05818, 4, regMRQC, 4, 1)                     // MRQC
	m.alias(0x05C00, 4, regRETA0, 4, 32)                   // RETA
	m.alias(0x05C80, 4, regRSSRK0, 4, 10)                  // RSSRK
	m.alias(0x06030, 0x40, 0x08680, 4, 16)                 // QPTC
	return m
}

// Reset values the datasheet leaves to the EEPROM; chosen for an 82599ES
// SFP+ board: AUTOC LMS = 10G serial, AUTOC2 10G PMA/PMD = SFI. RDRXCTL's
// hardware default of RSCFRSTSIZE is not documented in the reference; a
// non-zero value is used so that drivers that clear it are seen to.
const (
	autocResetValue   = 3 << 13
	autoc2ResetValue  = 2 << 16
	rdrxctlResetValue = 0x8 << 17
)
