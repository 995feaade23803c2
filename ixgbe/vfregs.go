package ixgbe

// The 82599 virtual function's register map (its own BAR0), the VF side of
// the VF<->PF mailbox and the mailbox protocol's message IDs and API
// versions. Sources, each value checked against both:
//   - Linux ixgbevf: drivers/net/ethernet/intel/ixgbevf/regs.h (VF
//     registers), defines.h (bits), mbx.h (mailbox bits, message IDs, the
//     ixgbe_pfvf_api_rev enum), vf.c (request and reply layouts), mbx.c
//     (the legacy handshake), ixgbevf_main.c (negotiation order, VF
//     statistics).
//   - DPDK: drivers/net/intel/ixgbe/base/ixgbe_vf.h, ixgbe_vf.c,
//     ixgbe_mbx.h, ixgbe_mbx.c.
//
// Also in ../shared/reference/ixgbe_registers.tsv (VF rows) and section 5 of
// ixgbe_semantics.md. TestVFConstantsMatchLinux pins them to the header
// values.

// VF general registers.
const (
	vfCTRL      = 0x00000 // VFCTRL; bit 26 RST as CTRL.RST
	vfSTATUS    = 0x00008 // read to flush posted writes
	vfLINKS     = 0x00010 // VFLINKS: the PF's LINKS, read-only (UP bit 30, speed 29:28)
	vfEICR      = 0x00100 // VTEICR, clear on read
	vfEIMC      = 0x0010C // VTEIMC, write 1 to mask
	vfPSRTYPE   = 0x00300 // VFPSRTYPE; RQPL in bits 31:29
	vfMBMEM     = 0x00200 // VFMBMEM: 16 words shared with the PF's PFMBMEM(vf)
	vfMAILBOX   = 0x002FC // VFMAILBOX
	vfEIMCAll   = 0x7     // the VF's three interrupt causes (IXGBE_VF_IRQ_CLEAR_MASK)
	vfRQPLShift = 29
)

// VF per-queue register blocks: the VF sees its pool's queues as 0..n-1,
// RX blocks at 0x1000 and TX blocks at 0x2000, 0x40 bytes each, laid out
// inside a block as the PF's (rxqRDBAL... and txqTDBAL... apply).
const (
	vfRxQueueBase = 0x01000
	vfTxQueueBase = 0x02000
	vfMaxQueues   = 8 // IXGBE_VF_MAX_TX_QUEUES / IXGBE_VF_MAX_RX_QUEUES
)

func vfRxQueueReg(q int, reg uint32) uint32 { return vfRxQueueBase + 0x40*uint32(q) + reg }
func vfTxQueueReg(q int, reg uint32) uint32 { return vfTxQueueBase + 0x40*uint32(q) + reg }

// VF statistics. They are not cleared on read and the VF cannot clear
// them: packet counters wrap at 32 bits, octet counters (LSB plus 4 bits
// of MSB) at 36.
const (
	vfGPRC     = 0x0101C
	vfGORCLSB  = 0x01020
	vfGORCMSB  = 0x01024
	vfMPRC     = 0x01034
	vfGPTC     = 0x0201C
	vfGOTCLSB  = 0x02020
	vfGOTCMSB  = 0x02024
	vfStatMask = 1<<32 - 1
	vfOctMask  = 1<<36 - 1
)

// VFMAILBOX bits. PFSTS, PFACK and RSTD clear when read, so the driver
// keeps what it read of them until it has acted on them.
const (
	mbxREQ     = 1 << 0 // write 1: a message for the PF is in the buffer
	mbxACK     = 1 << 1 // write 1: the PF's message was read
	mbxVFU     = 1 << 2 // the VF holds the buffer
	mbxPFU     = 1 << 3 // the PF holds the buffer
	mbxPFSTS   = 1 << 4 // the PF wrote a message
	mbxPFACK   = 1 << 5 // the PF acknowledged the VF's message
	mbxRSTI    = 1 << 6 // the PF is resetting (a level)
	mbxRSTD    = 1 << 7 // the PF's reset is done
	mbxR2CBits = mbxPFSTS | mbxPFACK | mbxRSTD

	mbxWords = 16 // IXGBE_VFMAILBOX_SIZE
)

// Mailbox message word 0: the ID in bits 15:0, MSGINFO in 23:16, and the
// PF's verdict in the top bits of a reply.
const (
	msgACK       = 0x80000000 // IXGBE_VT_MSGTYPE_ACK, later named SUCCESS
	msgNACK      = 0x40000000 // IXGBE_VT_MSGTYPE_NACK, later named FAILURE
	msgCTS       = 0x20000000 // the VF is clear to send
	msgInfoShift = 16
	msgInfoMask  = 0xFF << msgInfoShift
	msgIDMask    = 0xFFFF
)

// Message IDs (VF to PF, except the PF's control message).
const (
	msgReset         = 0x01
	msgSetMACAddr    = 0x02
	msgSetMulticast  = 0x03
	msgSetVLAN       = 0x04
	msgSetLPE        = 0x05
	msgSetMACVLAN    = 0x06
	msgAPINegotiate  = 0x08
	msgGetQueues     = 0x09
	msgGetRETA       = 0x0A
	msgGetRSSKey     = 0x0B
	msgUpdateXcast   = 0x0C
	msgGetLinkState  = 0x10
	msgPFControl     = 0x0100 // the PF's "ping"; without CTS: reset yourself
	resetReplyWords  = 4      // IXGBE_VF_PERMADDR_MSG_LEN
	resetMCTypeWord  = 3      // IXGBE_VF_MC_TYPE_WORD
	queuesReplyWords = 5
	maxMulticast     = 30 // hashes that fit the buffer, two per word
)

// GET_QUEUES reply words.
const (
	queuesTx      = 1
	queuesRx      = 2
	queuesTransVL = 3 // port VLAN / traffic classes
	queuesDefault = 4
)

// MailboxAPI is a version of the VF<->PF mailbox protocol, numbered as the
// ixgbe_pfvf_api_rev enum numbers them (the value sent in API_NEGOTIATE).
type MailboxAPI uint32

const (
	API10 MailboxAPI = 0 // ixgbe_mbox_api_10
	API20 MailboxAPI = 1 // ixgbe_mbox_api_20 (Solaris), never asked for
	API11 MailboxAPI = 2 // ixgbe_mbox_api_11: GET_QUEUES
	API12 MailboxAPI = 3 // ixgbe_mbox_api_12: GET_RETA, GET_RSS_KEY, UPDATE_XCAST_MODE
	API13 MailboxAPI = 4 // ixgbe_mbox_api_13: promiscuous xcast mode
	API14 MailboxAPI = 5 // ixgbe_mbox_api_14: IPsec offload, GET_LINK_STATE
)

func (a MailboxAPI) String() string {
	switch a {
	case API10:
		return "1.0"
	case API20:
		return "2.0"
	case API11:
		return "1.1"
	case API12:
		return "1.2"
	case API13:
		return "1.3"
	case API14:
		return "1.4"
	}
	return "unknown"
}

// negotiationOrder is the order Linux ixgbevf asks for API versions in
// (ixgbevf_negotiate_api, up to 1.4: the newest a Linux PF answers and the
// newest whose mailbox handshake is the legacy one written here).
var negotiationOrder = []MailboxAPI{API14, API13, API12, API11, API10}

// XcastMode is what UPDATE_XCAST_MODE asks the PF to deliver beyond the
// VF's own unicast addresses.
type XcastMode uint32

const (
	XcastNone     XcastMode = 0 // IXGBEVF_XCAST_MODE_NONE: only the VF's addresses
	XcastMulti    XcastMode = 1 // and broadcast and the multicast groups it set
	XcastAllMulti XcastMode = 2 // and all multicast
	XcastPromisc  XcastMode = 3 // everything (API 1.3; the 82599's PF refuses it)
)

func (m XcastMode) String() string {
	switch m {
	case XcastNone:
		return "none"
	case XcastMulti:
		return "multicast"
	case XcastAllMulti:
		return "all-multicast"
	case XcastPromisc:
		return "promiscuous"
	}
	return "unknown"
}
