package ixgbe

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
)

// TestVFConstantsMatchLinux pins the VF register offsets, mailbox bits,
// message IDs and API enum to the values published in Linux's ixgbevf
// headers (regs.h, mbx.h, defines.h; the same in DPDK's ixgbe_vf.h and
// ixgbe_mbx.h), by the headers' names.
func TestVFConstantsMatchLinux(t *testing.T) {
	for _, c := range []struct {
		linux     string
		ours, pub uint32
	}{
		{"IXGBE_VFCTRL", vfCTRL, 0x00000},
		{"IXGBE_VFSTATUS", vfSTATUS, 0x00008},
		{"IXGBE_VFLINKS", vfLINKS, 0x00010},
		{"IXGBE_VTEICR", vfEICR, 0x00100},
		{"IXGBE_VTEIMC", vfEIMC, 0x0010C},
		{"IXGBE_VF_IRQ_CLEAR_MASK", vfEIMCAll, 7},
		{"IXGBE_VFPSRTYPE", vfPSRTYPE, 0x00300},
		{"IXGBE_VFMBMEM", vfMBMEM, 0x00200},
		{"IXGBE_VFMAILBOX", vfMAILBOX, 0x002FC},
		{"IXGBE_VFRDBAL(0)", vfRxQueueReg(0, rxqRDBAL), 0x01000},
		{"IXGBE_VFRDBAH(1)", vfRxQueueReg(1, rxqRDBAH), 0x01044},
		{"IXGBE_VFRDLEN(2)", vfRxQueueReg(2, rxqRDLEN), 0x01088},
		{"IXGBE_VFDCA_RXCTRL(0)", vfRxQueueReg(0, rxqDCA), 0x0100C},
		{"IXGBE_VFRDH(0)", vfRxQueueReg(0, rxqRDH), 0x01010},
		{"IXGBE_VFSRRCTL(1)", vfRxQueueReg(1, rxqSRRCTL), 0x01054},
		{"IXGBE_VFRDT(7)", vfRxQueueReg(7, rxqRDT), 0x011D8},
		{"IXGBE_VFRXDCTL(1)", vfRxQueueReg(1, rxqRXDCTL), 0x01068},
		{"IXGBE_VFTDBAL(0)", vfTxQueueReg(0, txqTDBAL), 0x02000},
		{"IXGBE_VFTDBAH(1)", vfTxQueueReg(1, txqTDBAH), 0x02044},
		{"IXGBE_VFTDLEN(0)", vfTxQueueReg(0, txqTDLEN), 0x02008},
		{"IXGBE_VFDCA_TXCTRL(0)", vfTxQueueReg(0, txqDCA), 0x0200C},
		{"IXGBE_VFTDH(0)", vfTxQueueReg(0, txqTDH), 0x02010},
		{"IXGBE_VFTDT(3)", vfTxQueueReg(3, txqTDT), 0x020D8},
		{"IXGBE_VFTXDCTL(0)", vfTxQueueReg(0, txqTXDCTL), 0x02028},
		{"IXGBE_VFTDWBAL(0)", vfTxQueueReg(0, txqTDWBAL), 0x02038},
		{"IXGBE_VFTDWBAH(0)", vfTxQueueReg(0, txqTDWBAH), 0x0203C},
		{"IXGBE_VFGPRC", vfGPRC, 0x0101C},
		{"IXGBE_VFGORC_LSB", vfGORCLSB, 0x01020},
		{"IXGBE_VFGORC_MSB", vfGORCMSB, 0x01024},
		{"IXGBE_VFMPRC", vfMPRC, 0x01034},
		{"IXGBE_VFGPTC", vfGPTC, 0x0201C},
		{"IXGBE_VFGOTC_LSB", vfGOTCLSB, 0x02020},
		{"IXGBE_VFGOTC_MSB", vfGOTCMSB, 0x02024},
		{"IXGBE_CTRL_RST", ctrlRST, 0x04000000},
		{"IXGBE_LINKS_UP", linksUp, 0x40000000},
		{"IXGBE_VFMAILBOX_REQ", mbxREQ, 0x01},
		{"IXGBE_VFMAILBOX_ACK", mbxACK, 0x02},
		{"IXGBE_VFMAILBOX_VFU", mbxVFU, 0x04},
		{"IXGBE_VFMAILBOX_PFU", mbxPFU, 0x08},
		{"IXGBE_VFMAILBOX_PFSTS", mbxPFSTS, 0x10},
		{"IXGBE_VFMAILBOX_PFACK", mbxPFACK, 0x20},
		{"IXGBE_VFMAILBOX_RSTI", mbxRSTI, 0x40},
		{"IXGBE_VFMAILBOX_RSTD", mbxRSTD, 0x80},
		{"IXGBE_VFMAILBOX_R2C_BITS", mbxR2CBits, 0xB0},
		{"IXGBE_VFMAILBOX_SIZE", mbxWords, 16},
		{"IXGBE_VT_MSGTYPE_ACK", msgACK, 0x80000000},
		{"IXGBE_VT_MSGTYPE_NACK", msgNACK, 0x40000000},
		{"IXGBE_VT_MSGTYPE_CTS", msgCTS, 0x20000000},
		{"IXGBE_VT_MSGINFO_SHIFT", msgInfoShift, 16},
		{"IXGBE_VF_RESET", msgReset, 0x01},
		{"IXGBE_VF_SET_MAC_ADDR", msgSetMACAddr, 0x02},
		{"IXGBE_VF_SET_MULTICAST", msgSetMulticast, 0x03},
		{"IXGBE_VF_SET_VLAN", msgSetVLAN, 0x04},
		{"IXGBE_VF_SET_LPE", msgSetLPE, 0x05},
		{"IXGBE_VF_SET_MACVLAN", msgSetMACVLAN, 0x06},
		{"IXGBE_VF_API_NEGOTIATE", msgAPINegotiate, 0x08},
		{"IXGBE_VF_GET_QUEUE", msgGetQueues, 0x09},
		{"IXGBE_VF_GET_RETA", msgGetRETA, 0x0A},
		{"IXGBE_VF_GET_RSS_KEY", msgGetRSSKey, 0x0B},
		{"IXGBE_VF_UPDATE_XCAST_MODE", msgUpdateXcast, 0x0C},
		{"IXGBE_VF_GET_LINK_STATE", msgGetLinkState, 0x10},
		{"IXGBE_PF_CONTROL_MSG", msgPFControl, 0x100},
		{"IXGBE_VF_PERMADDR_MSG_LEN", resetReplyWords, 4},
		{"IXGBE_VF_MC_TYPE_WORD", resetMCTypeWord, 3},
		{"IXGBE_VF_TX_QUEUES", queuesTx, 1},
		{"IXGBE_VF_RX_QUEUES", queuesRx, 2},
		{"IXGBE_VF_TRANS_VLAN", queuesTransVL, 3},
		{"IXGBE_VF_DEF_QUEUE", queuesDefault, 4},
		{"IXGBE_VF_MAX_TX_QUEUES", vfMaxQueues, 8},
		{"ixgbe_mbox_api_10", uint32(API10), 0},
		{"ixgbe_mbox_api_20", uint32(API20), 1},
		{"ixgbe_mbox_api_11", uint32(API11), 2},
		{"ixgbe_mbox_api_12", uint32(API12), 3},
		{"ixgbe_mbox_api_13", uint32(API13), 4},
		{"ixgbe_mbox_api_14", uint32(API14), 5},
		{"IXGBEVF_XCAST_MODE_NONE", uint32(XcastNone), 0},
		{"IXGBEVF_XCAST_MODE_MULTI", uint32(XcastMulti), 1},
		{"IXGBEVF_XCAST_MODE_ALLMULTI", uint32(XcastAllMulti), 2},
		{"IXGBEVF_XCAST_MODE_PROMISC", uint32(XcastPromisc), 3},
	} {
		if c.ours != c.pub {
			t.Errorf("%s: ours %#x, Linux %#x", c.linux, c.ours, c.pub)
		}
	}
	if want := []MailboxAPI{API14, API13, API12, API11, API10}; !slices.Equal(negotiationOrder, want) {
		t.Errorf("negotiation order %v, ixgbevf_negotiate_api's %v", negotiationOrder, want)
	}
}

// TestVFMulticastVector: the 12 hash bits of each filter type, as
// ixgbevf_mta_vector extracts them.
func TestVFMulticastVector(t *testing.T) {
	a := net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 0xab, 0xcd}
	for mo, want := range []uint32{0xCDA, 0x9B5, 0x36A, 0xDAB} {
		if got := mtaVector(a, mo); got != want {
			t.Errorf("filter type %d: %#x, want %#x", mo, got, want)
		}
	}
}

// TestVFCounterWrap: the VF's counters are not cleared on read and wrap at
// 32 (packets) or 36 bits (octets); what was counted is the difference
// modulo that width, across a wrap too.
func TestVFCounterWrap(t *testing.T) {
	pkts, octets := vfCounters[0], vfCounters[1]
	for _, c := range []struct {
		c          vfCounter
		last, now  uint64
		wantCounts uint64
	}{
		{pkts, 10, 25, 15},
		{pkts, 0xFFFFFFF0, 0x10, 0x20},
		{octets, 0xF_FFFF_FF00, 0x100, 0x200},
		{octets, 0x1_0000_0000, 0x2_0000_0001, 0x1_0000_0001},
	} {
		if got := c.c.counted(c.last, c.now); got != c.wantCounts {
			t.Errorf("counter %#x from %#x to %#x: %d counted, want %d", c.c.lo, c.last, c.now, got, c.wantCounts)
		}
	}
}

// simVFs is a simulated 82599 with n VFs enabled and no PF driver yet.
func simVFs(t *testing.T, n int) *sim.PF {
	t.Helper()
	pf := sim.NewPF(sim.DefaultOptions())
	t.Cleanup(func() { pf.Close() })
	if err := pf.EnableVFs(n); err != nil {
		t.Fatal(err)
	}
	return pf
}

// TestOpenVFWhilePFResets: until the PF's driver finishes its reset
// (CTRL_EXT.PFRSTD) the VF's mailbox shows RSTI and the VF may not be
// brought up; OpenVF says so once its reset timeout passes.
func TestOpenVFWhilePFResets(t *testing.T) {
	pf := simVFs(t, 1)
	vf := pf.VF(0)
	start := time.Now()
	_, err := OpenVF(vf, VFConfig{ResetTimeout: 50 * time.Millisecond, RingMemory: hugepage.Options{PageSize: hugepage.Page4K}})
	var te *TimeoutError
	if !errors.As(err, &te) || te.Reg != vfMAILBOX || !strings.Contains(err.Error(), "RSTI") {
		t.Fatalf("OpenVF with the PF in reset: %v; want a TimeoutError on VFMAILBOX naming RSTI", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("OpenVF took %v to give up", d)
	}
}

// TestOpenVFSilentPF: a PF whose driver finished its reset but never
// answers the mailbox: OpenVF's RESET request times out with a
// MailboxError naming the request.
func TestOpenVFSilentPF(t *testing.T) {
	pf := simVFs(t, 2)
	bar, err := pf.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	bar.Write32(regCTRLEXT, bar.Read32(regCTRLEXT)|1<<14) // PFRSTD: what a PF driver writes when it is up
	vf := pf.VF(1)
	_, err = OpenVF(vf, VFConfig{MailboxTimeout: 30 * time.Millisecond, RingMemory: hugepage.Options{PageSize: hugepage.Page4K}})
	var me *MailboxError
	if !errors.As(err, &me) || me.Request != "RESET" || !strings.Contains(err.Error(), "no acknowledgement") {
		t.Fatalf("OpenVF with a silent PF: %v; want a MailboxError on RESET", err)
	}
}
