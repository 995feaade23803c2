package ixgbe

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vfio"
)

// VFConfig describes how OpenVF brings an 82599 virtual function up. The
// zero value of every field selects a sensible default.
type VFConfig struct {
	// RxQueues and TxQueues are the numbers of queues (default 1 each, at
	// most what the PF grants the VF: GET_QUEUES, 1 before API 1.1). With
	// several RX queues the PF's RSS spreads frames over them; RxQueues
	// must then be a power of two.
	RxQueues, TxQueues int
	// RxRingSize, TxRingSize, RxBufSize, TxThresholds and TxHeadWriteBack
	// are as in Config.
	RxRingSize, TxRingSize int
	RxBufSize              int
	TxThresholds           TxThresholds
	TxHeadWriteBack        bool
	// MTU is the largest IP packet (default 1500, at most 9710); the VF
	// asks the PF for MTU+18-byte frames (SET_LPE).
	MTU int
	// VLANStrip removes 802.1Q tags from received frames and reports them
	// in RxDone.VLAN.
	VLANStrip bool
	// MAC is the address the VF asks the PF for (SET_MAC_ADDR). Nil uses
	// the address the host assigned (ip link set PF vf N mac ...); with
	// neither, OpenVF fails. A host that assigned an address refuses
	// another unless the VF is trusted.
	MAC net.HardwareAddr
	// APIs are the mailbox API versions offered, newest first (default
	// 1.4, 1.3, 1.2, 1.1, 1.0, as Linux's ixgbevf offers them).
	APIs []MailboxAPI
	// ResetTimeout bounds each wait of the reset sequence and each queue
	// enable or disable (default 1 s).
	ResetTimeout time.Duration
	// MailboxTimeout bounds each wait for the PF in a mailbox exchange
	// (default 1 s: Linux's 2000 polls 500 µs apart).
	MailboxTimeout time.Duration
	// LinkTimeout, if positive, makes OpenVF wait that long for the link.
	LinkTimeout time.Duration
	// IOVA and RingMemory are as in Config.
	IOVA       *hugepage.IOVAAllocator
	RingMemory hugepage.Options
	// Logf reports resets by the PF and recoveries (default log.Printf).
	Logf func(format string, args ...any)
}

func (c *VFConfig) setDefaults() error {
	pf := Config{
		RxQueues: 1, TxQueues: 1,
		RxRingSize: c.RxRingSize, TxRingSize: c.TxRingSize, RxBufSize: c.RxBufSize,
		MTU: c.MTU, TxThresholds: c.TxThresholds, TxHeadWriteBack: c.TxHeadWriteBack,
		ResetTimeout: c.ResetTimeout, RingMemory: c.RingMemory,
	}
	if err := pf.setDefaults(); err != nil {
		return err
	}
	c.RxRingSize, c.TxRingSize, c.RxBufSize, c.MTU = pf.RxRingSize, pf.TxRingSize, pf.RxBufSize, pf.MTU
	c.TxThresholds, c.ResetTimeout, c.RingMemory = pf.TxThresholds, pf.ResetTimeout, pf.RingMemory
	if c.RxQueues == 0 {
		c.RxQueues = 1
	}
	if c.TxQueues == 0 {
		c.TxQueues = 1
	}
	if c.RxQueues < 1 || c.RxQueues > vfMaxQueues || c.TxQueues < 1 || c.TxQueues > vfMaxQueues || c.RxQueues&(c.RxQueues-1) != 0 {
		return fmt.Errorf("ixgbe VF: %d RX / %d TX queues requested; a VF has 1 to %d each, RX a power of two", c.RxQueues, c.TxQueues, vfMaxQueues)
	}
	if c.MailboxTimeout == 0 {
		c.MailboxTimeout = time.Second
	}
	if len(c.APIs) == 0 {
		c.APIs = negotiationOrder
	}
	if c.MAC != nil && !validUnicast(c.MAC) {
		return fmt.Errorf("ixgbe VF: MAC %s is not a unicast Ethernet address", c.MAC)
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
	return nil
}

func validUnicast(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && !bytes.Equal(mac, make([]byte, 6))
}

// VFInfo is what the PF told the VF at bring-up.
type VFInfo struct {
	API MailboxAPI
	// PermanentMAC is the address the host assigned (nil: none).
	PermanentMAC net.HardwareAddr
	// MaxRxQueues and MaxTxQueues are the queues the PF grants the VF.
	MaxRxQueues, MaxTxQueues int
	// TrafficClasses is GET_QUEUES' word 3: traffic classes, or with one
	// class, nonzero when the host tags the VF's frames with a port VLAN.
	TrafficClasses int
	// DefaultQueue is the queue untagged traffic uses with several classes.
	DefaultQueue int
	// MulticastFilterType is which 12 address bits hash into the PF's
	// multicast table (MCSTCTRL.MO).
	MulticastFilterType int
}

// VF is one 82599 virtual function brought up by OpenVF: its queues on the
// ring contract, and its requests to the host's PF through the mailbox.
// As with Port, each queue has one owner and the control-plane methods are
// safe for concurrent use; CheckReset, which restarts the queues after a
// reset by the PF, must be called by the queues' owner (not concurrently
// with their data-path calls).
type VF struct {
	regs
	dev vfio.Device
	cfg VFConfig

	mu      sync.Mutex // mailbox, control plane, reset recovery
	mbx     mailbox
	info    VFInfo
	mac     net.HardwareAddr
	rings   *queueRings
	rx      []*RxQueue
	tx      []*TxQueue
	running []bool // per queue (RX then TX): should run after a recovery
	// What the VF asked for, to ask again after a reset.
	multicast []net.HardwareAddr
	vlans     []uint16
	xcast     XcastMode
	xcastSet  bool
	// resetting: a reset by the PF was noticed and bring-up has not
	// completed since.
	resetting bool
	resets    uint64
	stats     vfStatState
	stopped   bool
	closed    bool
}

// OpenVF takes over the 82599 VF behind dev and brings it up as cfg says:
// reset, the reset handshake with the PF, API negotiation, queues, frame
// size and address, queues enabled and empty. On error nothing stays
// mapped.
func OpenVF(dev vfio.Device, cfg VFConfig) (*VF, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := checkModel(dev.Config(), true); err != nil {
		return nil, fmt.Errorf("ixgbe %s: %w", dev.Address(), err)
	}
	if err := vfio.EnableBusMaster(dev.Config()); err != nil {
		return nil, fmt.Errorf("ixgbe VF %s: enable bus mastering: %w", dev.Address(), err)
	}
	bar, err := dev.BAR(0)
	if err != nil {
		return nil, fmt.Errorf("ixgbe VF %s: map BAR0: %w", dev.Address(), err)
	}
	v := &VF{regs: regs{bar}, dev: dev, cfg: cfg, mac: cfg.MAC}
	v.mbx = mailbox{r: v.regs, timeout: cfg.MailboxTimeout}
	alloc := cfg.IOVA
	if alloc == nil {
		if alloc, err = hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit); err != nil {
			return nil, err
		}
	}
	v.rings, err = newQueueRings(bar, dev.DMA(), alloc, ringSpec{
		layout:   vfQueues,
		rxQueues: cfg.RxQueues, txQueues: cfg.TxQueues,
		rxSize: cfg.RxRingSize, txSize: cfg.TxRingSize,
		rxBufSize: cfg.RxBufSize, maxRxWrite: v.MaxRxWrite(),
		headWB: cfg.TxHeadWriteBack, memory: cfg.RingMemory,
	})
	if err == nil {
		v.rx, v.tx = v.rings.rx, v.rings.tx
		v.running = make([]bool, len(v.rx)+len(v.tx))
		for i := range v.running {
			v.running[i] = true
		}
		v.mu.Lock()
		err = v.bringUp()
		v.mu.Unlock()
	}
	if err == nil && cfg.LinkTimeout > 0 {
		err = v.waitLink(cfg.LinkTimeout)
	}
	if err != nil {
		v.stopHW()
		return nil, errors.Join(fmt.Errorf("ixgbe VF %s: %w", dev.Address(), err), v.rings.free())
	}
	return v, nil
}

// bringUp resets the VF and sets it up again: the whole of OpenVF after
// the rings exist, and of a recovery. Under v.mu; every queue is stopped
// and drained.
func (v *VF) bringUp() error {
	if err := v.resetHW(); err != nil {
		return err
	}
	if err := v.negotiateAPI(); err != nil {
		return err
	}
	if err := v.getQueues(); err != nil {
		return err
	}
	if v.cfg.RxQueues > v.info.MaxRxQueues || v.cfg.TxQueues > v.info.MaxTxQueues {
		return fmt.Errorf("the PF grants this VF %d RX and %d TX queues (mailbox API %v); %d and %d requested",
			v.info.MaxRxQueues, v.info.MaxTxQueues, v.info.API, v.cfg.RxQueues, v.cfg.TxQueues)
	}
	if err := v.setLPE(); err != nil {
		return err
	}
	if err := v.applyMAC(); err != nil {
		return err
	}
	if err := v.replayFilters(); err != nil {
		return err
	}
	if err := v.startQueues(); err != nil {
		return err
	}
	v.stats.snapshot(v.regs)
	v.resetting = false
	return nil
}

// stopHW masks the VF's interrupts and disables its queues without
// waiting (ixgbevf_stop_hw_vf); the reset that follows waits for nothing
// either.
func (v *VF) stopHW() {
	v.write(vfEIMC, vfEIMCAll)
	v.read(vfEICR)
	// A queue its owner stopped already is not written to: Recover runs
	// beside the owners' goroutines.
	for i := range v.rx {
		v.clear(vfRxQueueReg(i, rxqRXDCTL), rxdctlEnable)
		if !v.rx[i].stopped {
			v.rx[i].stopped = true
		}
	}
	for i := range v.tx {
		v.clear(vfTxQueueReg(i, txqTXDCTL), txdctlEnable)
		if !v.tx[i].stopped {
			v.tx[i].stopped = true
		}
	}
	v.write(vfPSRTYPE, 0)
}

// resetHW is the VF reset and the reset handshake with the PF
// (ixgbevf_reset_hw_vf): VFCTRL.RST, wait until the mailbox shows neither
// a PF reset in progress (RSTI) nor one just done (RSTD, clear on read),
// then the RESET message, whose reply carries the address the host
// assigned (ACK) or says it assigned none (NACK), and the multicast
// filter type.
func (v *VF) resetHW() error {
	v.stopHW()
	v.info = VFInfo{API: API10}
	v.write(vfCTRL, ctrlRST)
	v.read(vfSTATUS)
	deadline := time.Now().Add(v.cfg.ResetTimeout)
	for i := 0; ; i++ {
		st := v.mbx.status()
		if st&(mbxRSTI|mbxRSTD) == 0 {
			break
		}
		v.mbx.forget(mbxRSTD)
		if time.Now().After(deadline) {
			return &TimeoutError{What: "the PF to finish its reset (VFMAILBOX.RSTI): is the PF's driver up?", Reg: vfMAILBOX, Value: st, Timeout: v.cfg.ResetTimeout}
		}
		backOff(i)
	}
	var reply [resetReplyWords]uint32
	ack, err := v.mbx.exchange([]uint32{msgReset}, reply[:], "RESET", true)
	if err != nil {
		return err
	}
	if ack {
		mac := net.HardwareAddr{byte(reply[1]), byte(reply[1] >> 8), byte(reply[1] >> 16), byte(reply[1] >> 24), byte(reply[2]), byte(reply[2] >> 8)}
		if validUnicast(mac) {
			v.info.PermanentMAC = mac
		}
	}
	v.info.MulticastFilterType = int(reply[resetMCTypeWord] & 3)
	return nil
}

// negotiateAPI offers the configured API versions newest first and keeps
// the first the PF acknowledges.
func (v *VF) negotiateAPI() error {
	var reply [3]uint32
	for _, api := range v.cfg.APIs {
		ack, err := v.mbx.exchange([]uint32{msgAPINegotiate, uint32(api), 0}, reply[:], "API_NEGOTIATE "+api.String(), false)
		if err != nil {
			return err
		}
		if ack {
			v.info.API = api
			return nil
		}
	}
	return &RefusedError{Request: fmt.Sprintf("every mailbox API version offered (%v)", v.cfg.APIs),
		Hint: "the host's ixgbe driver is too old or not Linux's; a Linux PF accepts 1.0 to 1.4"}
}

// getQueues asks how many queues the PF grants the VF (API 1.1 and
// later; before that the VF has queue 0 of each kind), with Linux's
// sanity rules for nonsense answers.
func (v *VF) getQueues() error {
	v.info.MaxRxQueues, v.info.MaxTxQueues, v.info.TrafficClasses, v.info.DefaultQueue = 1, 1, 0, 0
	if v.info.API < API11 {
		return nil
	}
	var reply [queuesReplyWords]uint32
	ack, err := v.mbx.exchange([]uint32{msgGetQueues, 0, 0, 0, 0}, reply[:], "GET_QUEUES", false)
	if err != nil {
		return err
	}
	if !ack {
		return &MailboxError{"GET_QUEUES", "the PF refused it"}
	}
	clamp := func(n uint32) int {
		if n == 0 || n > vfMaxQueues {
			return vfMaxQueues
		}
		return int(n)
	}
	v.info.MaxTxQueues = clamp(reply[queuesTx])
	v.info.MaxRxQueues = clamp(reply[queuesRx])
	v.info.TrafficClasses = int(reply[queuesTransVL])
	if v.info.TrafficClasses > v.info.MaxRxQueues {
		v.info.TrafficClasses = 1
	}
	v.info.DefaultQueue = int(reply[queuesDefault])
	if v.info.DefaultQueue >= v.info.MaxTxQueues {
		v.info.DefaultQueue = 0
	}
	return nil
}

// setLPE asks the PF to accept frames of MTU+18 bytes for the VF.
func (v *VF) setLPE() error {
	frame := uint32(v.cfg.MTU + ethOverhead)
	var reply [2]uint32
	ack, err := v.mbx.exchange([]uint32{msgSetLPE, frame}, reply[:], "SET_LPE", false)
	if err != nil {
		return err
	}
	if !ack {
		return &RefusedError{Request: fmt.Sprintf("a maximum frame of %d bytes (MTU %d)", frame, v.cfg.MTU),
			Hint: "the PF's MTU must be at least the VF's (ip link set PF mtu N), and on the 82599 jumbo frames need mailbox API 1.1 or later"}
	}
	return nil
}

// applyMAC settles the VF's address: the configured one, asked for, or
// the one the host assigned.
func (v *VF) applyMAC() error {
	if v.mac == nil {
		if v.info.PermanentMAC == nil {
			return errors.New("the host assigned this VF no MAC address and VFConfig.MAC is unset: set one, or on the host: ip link set PF vf N mac ADDR")
		}
		v.mac = v.info.PermanentMAC
		return nil
	}
	return v.requestMAC(v.mac)
}

// requestMAC asks the PF for mac as the VF's address (SET_MAC_ADDR).
func (v *VF) requestMAC(mac net.HardwareAddr) error {
	msg := []uint32{msgSetMACAddr,
		uint32(mac[0]) | uint32(mac[1])<<8 | uint32(mac[2])<<16 | uint32(mac[3])<<24,
		uint32(mac[4]) | uint32(mac[5])<<8}
	var reply [3]uint32
	ack, err := v.mbx.exchange(msg, reply[:], "SET_MAC_ADDR", false)
	if err != nil {
		return err
	}
	if !ack {
		hint := "the host does not allow this VF to change its MAC; ip link set PF vf N trust on"
		if v.info.PermanentMAC != nil {
			hint = fmt.Sprintf("the host does not allow this VF to change its MAC from %s, the one it assigned; use that one, or ip link set PF vf N trust on", v.info.PermanentMAC)
		}
		return &RefusedError{Request: "MAC " + mac.String() + " for VF " + v.dev.Address(), Hint: hint}
	}
	return nil
}

// replayFilters asks again for what was asked before a reset.
func (v *VF) replayFilters() error {
	if len(v.multicast) > 0 {
		if err := v.sendMulticast(v.multicast); err != nil {
			return err
		}
	}
	for _, vid := range v.vlans {
		if err := v.sendVLAN(vid, true); err != nil {
			return err
		}
	}
	if v.xcastSet {
		_, err := v.sendXcast(v.xcast)
		return err
	}
	return nil
}

// MAC is the VF's address.
func (v *VF) MAC() net.HardwareAddr {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.mac)
}

// Info is what the PF told the VF at its last bring-up.
func (v *VF) Info() VFInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := v.info
	i.PermanentMAC = slices.Clone(i.PermanentMAC)
	return i
}

// SetMAC asks the PF to make mac the VF's address. A host that assigned
// the VF an address refuses another (RefusedError) unless it trusts the
// VF.
func (v *VF) SetMAC(mac net.HardwareAddr) error {
	if !validUnicast(mac) {
		return fmt.Errorf("ixgbe VF: MAC %s is not a unicast Ethernet address", mac)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.requestMAC(mac); err != nil {
		return v.noteErr(err)
	}
	v.mac = slices.Clone(mac)
	return nil
}

// SetMulticast asks the PF to deliver the multicast groups addrs (at most
// 30, the hashes one message holds; use SetXcastMode(XcastAllMulti) for
// more). It replaces the previous list; an empty one clears it.
func (v *VF) SetMulticast(addrs []net.HardwareAddr) error {
	if len(addrs) > maxMulticast {
		return fmt.Errorf("ixgbe VF: %d multicast groups; the mailbox carries at most %d: ask for all multicast instead (SetXcastMode)", len(addrs), maxMulticast)
	}
	for _, a := range addrs {
		if len(a) != 6 || a[0]&1 == 0 {
			return fmt.Errorf("ixgbe VF: %s is not a multicast address", a)
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.sendMulticast(addrs); err != nil {
		return v.noteErr(err)
	}
	v.multicast = v.multicast[:0]
	for _, a := range addrs {
		v.multicast = append(v.multicast, slices.Clone(a))
	}
	return nil
}

// mtaVector is the 12 bits of a multicast address the PF's table is indexed
// by, as MCSTCTRL.MO (the filter type the RESET reply gave) selects them.
func mtaVector(a net.HardwareAddr, filterType int) uint32 {
	var h uint32
	switch filterType {
	case 0: // bits 47:36
		h = uint32(a[4])>>4 | uint32(a[5])<<4
	case 1: // bits 46:35
		h = uint32(a[4])>>3 | uint32(a[5])<<5
	case 2: // bits 45:34
		h = uint32(a[4])>>2 | uint32(a[5])<<6
	case 3: // bits 43:32
		h = uint32(a[4]) | uint32(a[5])<<8
	}
	return h & 0xFFF
}

func (v *VF) sendMulticast(addrs []net.HardwareAddr) error {
	msg := make([]uint32, mbxWords)
	msg[0] = msgSetMulticast | uint32(len(addrs))<<msgInfoShift
	for i, a := range addrs {
		msg[1+i/2] |= mtaVector(a, v.info.MulticastFilterType) << (16 * (i % 2))
	}
	var reply [1]uint32
	ack, err := v.mbx.exchange(msg, reply[:], "SET_MULTICAST", false)
	if err == nil && !ack {
		err = &RefusedError{Request: fmt.Sprintf("%d multicast groups", len(addrs))}
	}
	return err
}

// SetVLAN asks the PF to deliver (on) or stop delivering VLAN vid to the
// VF. A host that set a port VLAN for the VF (ip link set PF vf N vlan V)
// refuses, as does one whose VLAN table is full.
func (v *VF) SetVLAN(vid uint16, on bool) error {
	if vid >= 4096 {
		return fmt.Errorf("ixgbe VF: VLAN %d out of range 0-4095", vid)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	if err := v.sendVLAN(vid, on); err != nil {
		return v.noteErr(err)
	}
	i, found := slices.BinarySearch(v.vlans, vid)
	switch {
	case on && !found:
		v.vlans = slices.Insert(v.vlans, i, vid)
	case !on && found:
		v.vlans = slices.Delete(v.vlans, i, i+1)
	}
	return nil
}

func (v *VF) sendVLAN(vid uint16, on bool) error {
	msg := []uint32{msgSetVLAN, uint32(vid)}
	if on {
		msg[0] |= 1 << msgInfoShift
	}
	var reply [2]uint32
	ack, err := v.mbx.exchange(msg, reply[:], "SET_VLAN", false)
	if err == nil && !ack {
		verb := "adding"
		if !on {
			verb = "removing"
		}
		err = &RefusedError{Request: fmt.Sprintf("%s VLAN %d", verb, vid),
			Hint: "a host that set a port VLAN for this VF (ip link set PF vf N vlan V) filters VLANs itself, and the NIC's VLAN table may be full"}
	}
	return err
}

// SetXcastMode asks the PF what to deliver beyond the VF's own addresses
// (mailbox API 1.2 and later; promiscuous 1.3). Linux's PF grants an
// untrusted VF at most MULTI and says so only in its reply: a mode below
// the one asked for is reported as a RefusedError (the granted mode
// applies and is what a recovery asks for again). The 82599's PF refuses
// promiscuous to every VF.
func (v *VF) SetXcastMode(m XcastMode) error {
	if m > XcastPromisc {
		return fmt.Errorf("ixgbe VF: xcast mode %d unknown", m)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return err
	}
	got, err := v.sendXcast(m)
	if err != nil {
		return v.noteErr(err)
	}
	v.xcast, v.xcastSet = got, true
	if got < m {
		hint := "all-multicast needs a trusted VF: ip link set PF vf N trust on"
		if m == XcastPromisc {
			hint += "; the 82599 gives no VF promiscuous mode"
		}
		return &RefusedError{Request: m.String() + " mode (it granted " + got.String() + ")", Hint: hint}
	}
	return nil
}

// sendXcast asks for mode m and returns the mode the PF applied (word 1
// of its reply, as ixgbe_update_vf_xcast_mode writes it).
func (v *VF) sendXcast(m XcastMode) (XcastMode, error) {
	switch {
	case v.info.API < API12 || v.info.API == API20:
		return 0, fmt.Errorf("ixgbe VF: the PF speaks mailbox API %v; UPDATE_XCAST_MODE needs 1.2", v.info.API)
	case m == XcastPromisc && v.info.API < API13:
		return 0, fmt.Errorf("ixgbe VF: the PF speaks mailbox API %v; promiscuous mode needs 1.3", v.info.API)
	}
	var reply [2]uint32
	ack, err := v.mbx.exchange([]uint32{msgUpdateXcast, uint32(m)}, reply[:], "UPDATE_XCAST_MODE", false)
	if err == nil && !ack {
		err = &RefusedError{Request: m.String() + " mode",
			Hint: "all-multicast and promiscuous need a trusted VF (ip link set PF vf N trust on); the 82599 gives no VF promiscuous mode"}
	}
	if err != nil {
		return 0, err
	}
	got := XcastMode(reply[1])
	if got > XcastPromisc {
		return 0, &MailboxError{"UPDATE_XCAST_MODE", fmt.Sprintf("the PF applied mode %d, which does not exist", reply[1])}
	}
	return got, nil
}

// usable refuses requests while a reset by the PF waits for CheckReset.
func (v *VF) usable() error {
	switch {
	case v.closed:
		return errors.New("ixgbe VF: closed")
	case v.resetting:
		return ErrVFReset
	}
	return nil
}

// noteErr marks the VF for recovery when err says the PF reset it or
// stopped answering.
func (v *VF) noteErr(err error) error {
	var me *MailboxError
	if errors.Is(err, ErrVFReset) || errors.As(err, &me) {
		v.resetting = true
	}
	return err
}

// Link reads the link state the PF's port has (VFLINKS); down while a
// reset by the PF is pending.
func (v *VF) Link() Link {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.resetting || v.closed {
		return Link{}
	}
	r := v.read(vfLINKS)
	if r&linksUp == 0 {
		return Link{}
	}
	return Link{Up: true, Speed: linkSpeeds[r>>linksSpeedShift&linksSpeedMask]}
}

func (v *VF) waitLink(timeout time.Duration) error {
	err := v.waitSet(vfLINKS, linksUp, timeout, "link up (VFLINKS.UP)")
	if err != nil {
		return fmt.Errorf("%w (the VF's link is the PF's port's)", err)
	}
	return nil
}

// MaxRxWrite is the most bytes the VF writes into memory for one received
// frame (see Port.MaxRxWrite).
func (v *VF) MaxRxWrite() int { return max(v.cfg.MTU, defaultMTU) + ethOverhead }

// Close stops the VF's queues, masks its interrupts and unmaps and frees
// the descriptor rings. Drain the queues between Stop and Close to get
// posted buffers back; Drain still works after Close.
func (v *VF) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	err := v.stopLocked()
	v.closed = true
	if err != nil {
		// A queue did not confirm it is off: reset the VF so nothing
		// DMAs into memory about to be unmapped.
		v.write(vfCTRL, ctrlRST)
		time.Sleep(10 * time.Millisecond)
	}
	v.write(vfEIMC, vfEIMCAll)
	return errors.Join(err, v.rings.free())
}
