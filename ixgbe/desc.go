package ixgbe

// Descriptor layouts (datasheet 7.1.6 and 7.2.3). Every descriptor is 16
// bytes, little-endian, viewed here as two 64-bit words: qword 0 at byte 0
// and qword 1 at byte 8.

const descSize = 16

// Advanced receive descriptor, one-buffer (SRRCTL.DESCTYPE=001).
//
// Read format: qword 0 is the packet buffer address; qword 1 is the header
// buffer address, which one-buffer mode does not use and which must be 0:
// its bit 0 is where the device later writes DD, so zero also means "not
// done".
//
// Write-back format (overwrites all 16 bytes):
//
//	qword 0 bits 3:0   RSS type
//	        bits 15:4  packet type
//	        bits 31:16 header info (RSC count, header length, SPH)
//	        bits 63:32 RSS hash (RXCSUM.PCSD=1)
//	qword 1 bits 19:0  extended status, bits 31:20 extended errors
//	        bits 47:32 length written to this buffer
//	        bits 63:48 stripped VLAN tag (status VP)
const (
	rxStatDD    = 1 << 0
	rxStatEOP   = 1 << 1
	rxStatVP    = 1 << 3
	rxStatUDPCS = 1 << 4
	rxStatL4CS  = 1 << 5
	rxStatIPCS  = 1 << 6

	rxErrShift = 29      // the lowest of the three error bits below
	rxErrRXE   = 1 << 29 // any MAC error
	rxErrL4E   = 1 << 30 // L4 checksum wrong (valid with L4CS)
	rxErrIPE   = 1 << 31 // IPv4 header checksum wrong (valid with IPCS)

	rxLenShift  = 32
	rxVLANShift = 48

	// In qword 0, which the driver does not decode (see decodeRx).
	rxPTypeShift   = 4
	rxRSSHashShift = 32
)

// Advanced transmit descriptors (DEXT=1).
//
// Data descriptor: qword 0 is the buffer address; qword 1 low dword is
// cmd_type_len, high dword olinfo_status.
//
// Context descriptor: qword 0 low dword vlan_macip_lens, high dword the
// IPsec/FCoE seed (0 here); qword 1 low dword type_tucmd_mlhl, high dword
// mss_l4len_idx.
const (
	txdLenMask  = 0xFFFF
	txdDTypData = 0x3 << 20
	txdDTypCtx  = 0x2 << 20
	txdCmdEOP   = 1 << 24
	txdCmdIFCS  = 1 << 25
	txdCmdRS    = 1 << 27
	txdCmdDEXT  = 1 << 29
	txdCmdVLE   = 1 << 30
	txdCmdTSE   = 1 << 31

	txdStatDD     = 1 << 0 // in olinfo_status, written back on RS descriptors
	txdIdxShift   = 4
	txdCC         = 1 << 7
	txdPoptsIXSM  = 1 << 8
	txdPoptsTXSM  = 1 << 9
	txdPaylenShft = 14
	txdPaylenMax  = 1<<18 - 1

	ctxMACLenShift = 9
	ctxVLANShift   = 16
	ctxTUCmdIPv4   = 1 << 10
	ctxTUCmdL4UDP  = 0 << 11
	ctxTUCmdL4TCP  = 1 << 11
	ctxTUCmdL4SCTP = 2 << 11
	ctxIdxShift    = 4
	ctxL4LenShift  = 8
	ctxMSSShift    = 16

	// Context slots: the 82599 keeps two per queue. Plain checksum/VLAN
	// contexts use one and TSO the other, so alternating traffic of both
	// kinds does not reload a context for every packet.
	ctxSlotCsum = 0
	ctxSlotTSO  = 1
)
