// Package linuxpf is a model of the host's Linux ixgbe PF driver, the
// kernel that keeps the PF in the usual SR-IOV deployment while VFs are
// handed to guests (or to zcnet through vfio-pci). It is not silicon: it
// drives a PF only through its configuration space and BAR registers, as
// a driver does, so it runs as well against the simulated 82599 (package
// sim) as it would against a real one.
//
// It brings the PF up in SR-IOV mode as Linux does (pools, VT mode,
// the internal switch, PFRSTD, then NumVFs and VF Enable in the SR-IOV
// capability), answers the PF side of the mailbox as Linux's
// ixgbe_sriov.c does (ixgbe_msg_task: VF reset events, requests, acks;
// each message handled as ixgbe_rcv_msg_from_vf handles it, with its
// ACK, NACK and CTS), and applies an administrator's policy as `ip link
// set PF vf N mac|vlan|trust|spoofchk|state|query_rss` does (the ndo_set_vf_*
// handlers). Sources: Linux drivers/net/ethernet/intel/ixgbe/
// ixgbe_sriov.c, ixgbe_mbx.c and ixgbe_mbx.h; the register and bit facts
// in /work/shared/reference.
//
// Step runs one pass of the mailbox task (deterministic tests); Run
// does it in a goroutine until Stop.
package linuxpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/zcnet/zcnet/internal/idlepoll"
	"github.com/zcnet/zcnet/vfio"
)

// API is a mailbox API version as the VF names it in API_NEGOTIATE (the
// ixgbe_pfvf_api_rev enumeration).
type API uint32

// The API versions.
const (
	API10 API = 0
	API20 API = 1 // Solaris
	API11 API = 2
	API12 API = 3
	API13 API = 4
	API14 API = 5
	API15 API = 6 // DPDK / ESX mailbox; Linux's PF does not accept it
	API16 API = 7
	API17 API = 8
)

// LinuxAPIs are the versions Linux's ixgbe PF accepts (ixgbe_negotiate_vf_api)
// in the kernels this model follows for the 82599: 1.0 to 1.4. Newer
// kernels (with E610 support) also accept 1.6 and 1.7; their new
// requests (GET_PF_LINK_STATE is E610-only, FEATURES_NEGOTIATE) are not
// modelled, so they are not offered by default.
var LinuxAPIs = []API{API10, API11, API12, API13, API14}

// Mailbox message IDs and flags (ixgbe_mbx.h). They repeat package
// ixgbe's VF-side constants on purpose: written from the Linux source
// independently of the driver under test, a wrong value in either side
// makes the VF tests fail instead of agreeing with itself.
const (
	msgReset           = 0x01
	msgSetMACAddr      = 0x02
	msgSetMulticast    = 0x03
	msgSetVLAN         = 0x04
	msgSetLPE          = 0x05
	msgSetMACVLAN      = 0x06
	msgAPINegotiate    = 0x08
	msgGetQueues       = 0x09
	msgGetRETA         = 0x0A
	msgGetRSSKey       = 0x0B
	msgUpdateXcastMode = 0x0C
	msgGetLinkState    = 0x10
	msgControl         = 0x0100 // PF -> VF

	flagCTS  = 1 << 29
	flagNACK = 1 << 30
	flagACK  = 1 << 31

	mbxWords = 16
)

// Xcast modes (UPDATE_XCAST_MODE word 1).
const (
	XcastNone     = 0
	XcastMulti    = 1
	XcastAllMulti = 2
	XcastPromisc  = 3
)

// LinkState is the administrator's VF link setting.
type LinkState int

// The link settings (IFLA_VF_LINK_STATE_*).
const (
	LinkAuto LinkState = iota
	LinkEnable
	LinkDisable
)

// Config is the host's setup.
type Config struct {
	// NumVFs is how many VFs to create, 1 to 63 (Linux keeps one pool
	// for the PF).
	NumVFs int
	// QueuesPerPool is 2 (64 pools) or 4 (32 pools). Zero picks as
	// Linux does with four or more CPUs: 4 for up to 31 VFs, else 2.
	QueuesPerPool int
	// MTU is the PF's MTU; zero means 1500. Above 1500 the 82599's
	// legacy (API 1.0) VFs may not receive (ixgbe_set_vf_lpe).
	MTU int
	// APIs are the versions API_NEGOTIATE accepts; nil means LinuxAPIs.
	APIs []API
}

// VFInfo is what `ip link show` reports of a VF, plus the mailbox state.
type VFInfo struct {
	MAC          [6]byte
	AdminMAC     bool // set by the administrator (pf_set_mac)
	VLAN         uint16
	QoS          uint8
	Trusted      bool
	SpoofCheck   bool
	QueryRSS     bool
	Link         LinkState
	API          API
	ClearToSend  bool
	Xcast        int
	Multicast    []uint16 // MTA hashes the VF asked for
	Resets       int      // VF_RESET messages handled
	ResetEvents  int      // VF reset events (PFVFLRE) handled
	Messages     int      // requests handled
	Nacks        int      // requests answered with NACK
	LastRequest  uint32   // word 0 of the last request handled
	LastResponse uint32   // word 0 of the last reply sent
}

// vfState is the driver's vf_data_storage.
type vfState struct {
	mac        [6]byte
	pfSetMAC   bool
	vlan       uint16
	qos        uint8
	trusted    bool
	spoofchk   bool
	rssQuery   bool
	link       LinkState
	linkEnable bool
	api        API
	cts        bool
	xcast      int
	mc         []uint16
	macvlans   [][6]byte

	resets, events, msgs, nacks int
	lastReq, lastResp           uint32
}

// Host is the Linux PF driver model bound to one PF.
type Host struct {
	mu      sync.Mutex
	bar     vfio.BAR
	cfg     vfio.ConfigSpace
	conf    Config
	qpp     int
	pfMAC   [6]byte
	vfs     []vfState
	linkUp  bool
	maxMV   int // RAR entries VFs may use for SET_MACVLAN
	usedMV  int
	stop    chan struct{}
	running sync.WaitGroup
}

// ErrNoSRIOV reports a device without the SR-IOV capability.
var ErrNoSRIOV = errors.New("linuxpf: the device has no SR-IOV capability")

// Start brings the PF up in SR-IOV mode and creates the VFs, as loading
// ixgbe and writing sriov_numvfs do. The mailbox is serviced by Step or
// Run.
func Start(dev vfio.Device, conf Config) (*Host, error) {
	if conf.NumVFs < 1 || conf.NumVFs > 63 {
		return nil, fmt.Errorf("linuxpf: %d VFs: ixgbe creates 1 to 63", conf.NumVFs)
	}
	if conf.QueuesPerPool == 0 {
		conf.QueuesPerPool = 4
		if conf.NumVFs >= 32 {
			conf.QueuesPerPool = 2
		}
	}
	if conf.QueuesPerPool != 2 && conf.QueuesPerPool != 4 {
		return nil, fmt.Errorf("linuxpf: %d queues per pool: 2 or 4", conf.QueuesPerPool)
	}
	if conf.QueuesPerPool == 4 && conf.NumVFs > 31 {
		return nil, fmt.Errorf("linuxpf: %d VFs do not fit 32 pools of 4 queues", conf.NumVFs)
	}
	if conf.MTU == 0 {
		conf.MTU = 1500
	}
	if conf.APIs == nil {
		conf.APIs = LinuxAPIs
	}
	bar, err := dev.BAR(0)
	if err != nil {
		return nil, err
	}
	h := &Host{bar: bar, cfg: dev.Config(), conf: conf, qpp: conf.QueuesPerPool}
	h.vfs = make([]vfState, conf.NumVFs)
	for i := range h.vfs {
		// __ixgbe_enable_sriov: spoof checking on, link enabled, RSS
		// queries off, untrusted, xcast none.
		h.vfs[i] = vfState{spoofchk: true, linkEnable: true, api: API10}
	}
	h.maxMV = 128 - (15 + 1 + conf.NumVFs) // num_rar_entries - (IXGBE_MAX_PF_MACVLANS + 1 + num_vfs)
	if err := h.bringUp(); err != nil {
		return nil, err
	}
	return h, nil
}

// Run services the mailbox in a goroutine until Stop.
func (h *Host) Run() {
	h.mu.Lock()
	if h.stop != nil {
		h.mu.Unlock()
		return
	}
	stop := make(chan struct{})
	h.stop = stop
	h.mu.Unlock()
	h.running.Add(1)
	go func() {
		defer h.running.Done()
		idlepoll.Run(stop, h.Step)
	}()
}

// Stop ends Run and waits for it.
func (h *Host) Stop() {
	h.mu.Lock()
	stop := h.stop
	h.stop = nil
	h.mu.Unlock()
	if stop != nil {
		close(stop)
		h.running.Wait()
	}
}

// Step is one pass of ixgbe_msg_task over every VF (reset events, then
// requests, then acks) and of the link watch (a link change pings every
// VF). It returns the number of events handled.
func (h *Host) Step() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	if up := h.bar.Read32(regLINKS)&linksUp != 0; up != h.linkUp {
		h.linkUp = up
		for v := range h.vfs {
			h.ping(v)
		}
		n++
	}
	for v := range h.vfs {
		if h.checkForRst(v) {
			h.vfResetEvent(v)
			h.vfs[v].events++
			n++
		}
		if h.checkForBit(v, 0) {
			h.rcvMsg(v)
			n++
		}
		if h.checkForBit(v, 16) {
			if !h.vfs[v].cts {
				h.writeMbx(v, []uint32{flagNACK})
			}
			n++
		}
	}
	return n
}

// Info returns VF v's state as the host sees it.
func (h *Host) Info(v int) (VFInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return VFInfo{}, err
	}
	s := &h.vfs[v]
	return VFInfo{
		MAC: s.mac, AdminMAC: s.pfSetMAC, VLAN: s.vlan, QoS: s.qos, Trusted: s.trusted,
		SpoofCheck: s.spoofchk, QueryRSS: s.rssQuery, Link: s.link, API: s.api,
		ClearToSend: s.cts, Xcast: s.xcast, Multicast: append([]uint16(nil), s.mc...),
		Resets: s.resets, ResetEvents: s.events, Messages: s.msgs, Nacks: s.nacks,
		LastRequest: s.lastReq, LastResponse: s.lastResp,
	}, nil
}

// QueuesPerPool is the pool layout the PF was brought up with.
func (h *Host) QueuesPerPool() int { return h.qpp }

func (h *Host) checkVF(v int) error {
	if v < 0 || v >= len(h.vfs) {
		return fmt.Errorf("linuxpf: no VF %d (%d VFs)", v, len(h.vfs))
	}
	return nil
}
