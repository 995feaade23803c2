package ixgbe

// Register offsets in BAR0 and the bits of them this driver uses, as the
// 82599 datasheet (331520) names them. Only registers the driver touches are
// listed; every offset here is in ../shared/reference/ixgbe_registers.tsv
// (the reference directory beside this repository).

// General control and status.
const (
	regCTRL    = 0x00000
	regSTATUS  = 0x00008
	regCTRLEXT = 0x00018

	ctrlGIODis = 1 << 2  // PCIe master disable
	ctrlLRST   = 1 << 3  // link reset, self-clearing
	ctrlRST    = 1 << 26 // device reset, self-clearing

	statusGIOMaster = 1 << 19 // master requests still pending

	ctrlExtNSDis   = 1 << 16 // no-snoop disable (datasheet 4.6.7)
	ctrlExtDrvLoad = 1 << 28 // a driver owns the device
)

// EEPROM.
const (
	regEEC = 0x10010

	eecPRES = 1 << 8 // EEPROM present with a valid signature
	eecARD  = 1 << 9 // auto-read done
)

// Interrupts.
const (
	regEICR = 0x00800
	regEIMS = 0x00880
	regEIMC = 0x00888
	regGPIE = 0x00898

	eicrLSC = 1 << 20 // link status change

	// eimcAll masks every cause; bit 31 is reserved.
	eimcAll = 0x7FFFFFFF
)

// Receive global registers.
const (
	regRDRXCTL   = 0x02F00
	regRXCTRL    = 0x03000
	regHLREG0    = 0x04240
	regMAXFRS    = 0x04268
	regRXCSUM    = 0x05000
	regFCTRL     = 0x05080
	regVLNCTRL   = 0x05088
	regMCSTCTRL  = 0x05090
	regSECRXCTRL = 0x08D00
	regSECRXSTAT = 0x08D04

	rdrxctlCRCStrip    = 1 << 1
	rdrxctlDMAIDone    = 1 << 3
	rdrxctlRSCFrstMask = 0x1F << 17
	rdrxctlRSCACKC     = 1 << 25
	rdrxctlFCoEWrFix   = 1 << 26

	rxctrlRXEN = 1 << 0

	hlreg0TXCRCEN   = 1 << 0
	hlreg0RXCRCSTRP = 1 << 1
	hlreg0JumboEn   = 1 << 2
	hlreg0TXPadEn   = 1 << 10

	maxfrsShift = 16 // MFS lives in bits 31:16

	rxcsumIPPCSE = 1 << 12 // IP payload checksum enable
	rxcsumPCSD   = 1 << 13 // dword 1 of write-back holds the RSS hash

	fctrlMPE = 1 << 8  // multicast promiscuous
	fctrlUPE = 1 << 9  // unicast promiscuous
	fctrlBAM = 1 << 10 // accept broadcast

	vlnctrlVFE     = 1 << 30 // VLAN filter enable
	vlnctrlVETMask = 0xFFFF

	mcstctrlMFE = 1 << 2 // multicast table enable; MO (bits 1:0) stays 0: DA bits 47:36

	secrxctrlRXDis = 1 << 1
	secrxstatRdy   = 1 << 0
)

// Address filters, multicast and VLAN tables.
const (
	regMTA     = 0x05200 // 128 registers
	regRAL     = 0x0A200 // + 8n, 128 entries
	regRAH     = 0x0A204
	regMPSARLo = 0x0A600 // + 8n
	regMPSARHi = 0x0A604
	regVFTA    = 0x0A000 // 128 registers

	rahAV = 1 << 31 // address valid

	numRAR  = 128
	numMTA  = 128
	numVFTA = 128
)

// RSS.
const (
	regMRQC  = 0x0EC80
	regRETA  = 0x0EB00 // 32 registers, 4 one-byte entries each
	regRSSRK = 0x0EB80 // 10 registers

	mrqcRSSEn      = 0x1
	mrqcFieldTCPv4 = 1 << 16
	mrqcFieldIPv4  = 1 << 17
	mrqcFieldIPv6  = 1 << 20
	mrqcFieldTCPv6 = 1 << 21
	mrqcFieldUDPv4 = 1 << 22
	mrqcFieldUDPv6 = 1 << 23
	retaEntries    = 128
	rssKeyLen      = 40
	maxRSSQueues   = 16
)

// Transmit global registers.
const (
	regDMATXCTL = 0x04A80
	regRTTDCS   = 0x04900
	regMTQC     = 0x08120

	dmatxctlTE   = 1 << 0
	rttdcsARBDIS = 1 << 6
)

// Link.
const (
	regAUTOC = 0x042A0
	regLINKS = 0x042A4

	autocRestartAN = 1 << 12

	linksUp         = 1 << 30
	linksSpeedShift = 28
	linksSpeedMask  = 3
)

// Per-queue registers. RX queues 0-63 sit in the bank at 0x01000, 64-127 at
// 0x0D000; TX queues at 0x06000. Each queue has a 0x40-byte block.
const (
	rxqRDBAL  = 0x00
	rxqRDBAH  = 0x04
	rxqRDLEN  = 0x08
	rxqDCA    = 0x0C
	rxqRDH    = 0x10
	rxqSRRCTL = 0x14
	rxqRDT    = 0x18
	rxqRXDCTL = 0x28

	txqTDBAL  = 0x00
	txqTDBAH  = 0x04
	txqTDLEN  = 0x08
	txqDCA    = 0x0C
	txqTDH    = 0x10
	txqTDT    = 0x18
	txqTXDCTL = 0x28
	txqTDWBAL = 0x38
	txqTDWBAH = 0x3C

	rxdctlEnable = 1 << 25
	rxdctlVME    = 1 << 30 // strip VLAN tags on this queue

	txdctlPThreshShift = 0
	txdctlHThreshShift = 8
	txdctlWThreshShift = 16
	txdctlEnable       = 1 << 25

	srrctlBSizePktShift = 10 // bytes >> 10 gives the 1 KiB units of bits 4:0
	srrctlBSizePktMask  = 0x1F
	srrctlDescAdvOneBuf = 1 << 25 // DESCTYPE = 001
	srrctlDropEn        = 1 << 28

	dcaRxCtrlRelaxedWr = 1 << 12 // "must be 0" per datasheet 4.6.7
	dcaTxCtrlWBRelaxed = 1 << 11 // relaxed ordering of write-backs

	tdwbalHeadWBEn = 1 << 0

	maxQueues = 64 // what a non-virtualised PF uses in this driver; with pools, all 128
)

func rxQueueReg(q int, reg uint32) uint32 {
	if q < 64 {
		return 0x01000 + 0x40*uint32(q) + reg
	}
	return 0x0D000 + 0x40*uint32(q-64) + reg
}

func txQueueReg(q int, reg uint32) uint32 { return 0x06000 + 0x40*uint32(q) + reg }

// Statistics. All port counters clear on read; the octet counters are
// 36-bit values split into a low register and a high register holding bits
// 35:32.
const (
	regCRCERRS = 0x04000
	regILLERRC = 0x04004
	regERRBC   = 0x04008
	regMLFC    = 0x04034
	regMRFC    = 0x04038
	regRLEC    = 0x04040
	regMPC0    = 0x03FA0 // + 4n, 8 packet buffers
	regGPRC    = 0x04074
	regBPRC    = 0x04078
	regMPRC    = 0x0407C
	regGPTC    = 0x04080
	regGORCL   = 0x04088
	regGORCH   = 0x0408C
	regGOTCL   = 0x04090
	regGOTCH   = 0x04094
	regRUC     = 0x040A4
	regRFC     = 0x040A8
	regROC     = 0x040AC
	regRJC     = 0x040B0
	regTORL    = 0x040C0
	regTORH    = 0x040C4
	regTPR     = 0x040D0
	regTPT     = 0x040D4
	regMPTC    = 0x040F0
	regBPTC    = 0x040F4

	regRQSMR = 0x02300 // + 4n: RX queue -> stat counter map, one byte per queue
	regTQSM  = 0x08600 // + 4n: TX queue -> stat counter map

	numQueueStats = 16
)

func regQPRC(n int) uint32  { return 0x01030 + 0x40*uint32(n) }
func regQPRDC(n int) uint32 { return 0x01430 + 0x40*uint32(n) }
func regQBRCL(n int) uint32 { return 0x01034 + 0x40*uint32(n) }
func regQBRCH(n int) uint32 { return 0x01038 + 0x40*uint32(n) }
func regQPTC(n int) uint32  { return 0x08680 + 4*uint32(n) }
func regQBTCL(n int) uint32 { return 0x08700 + 8*uint32(n) }
func regQBTCH(n int) uint32 { return 0x08704 + 8*uint32(n) }
