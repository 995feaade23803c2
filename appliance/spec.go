package appliance

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vhost"
)

// Spec is what an appliance is assembled from: NIC ports, the guests each
// serves, and the poll cores. It is what a configuration file holds (JSON
// or YAML, the same keys) and what the command line is turned into.
type Spec struct {
	// Lcores is a DPDK-style core list ("2-3", "2,4"); empty: the last
	// CPU the process may run on.
	Lcores string `json:"lcores" yaml:"lcores"`
	// Burst is how many frames a port moves per poll and direction
	// (default 32).
	Burst int       `json:"burst" yaml:"burst"`
	NICs  []NICSpec `json:"nics" yaml:"nics"`

	// PageSize backs descriptor rings and copy buffers (0: 2 MiB
	// hugepages; tests use 4 KiB pages). Not in configuration files.
	PageSize hugepage.PageSize `json:"-" yaml:"-"`
	// LinkTimeout bounds the wait for link up when a NIC opens (0: 10 s).
	LinkTimeout time.Duration `json:"-" yaml:"-"`
}

// NICSpec is one NIC port (an 82599 PF) and the guests joined to its queue
// pairs.
type NICSpec struct {
	PCI string `json:"pci" yaml:"pci"`
	// QueuePairs is how many queue pairs each guest gets.
	QueuePairs int `json:"queue_pairs" yaml:"queue_pairs"`
	Rxd        int `json:"rxd" yaml:"rxd"`
	Txd        int `json:"txd" yaml:"txd"`
	MTU        int `json:"mtu" yaml:"mtu"`
	// Copy sends every frame through host buffers.
	Copy bool `json:"copy" yaml:"copy"`
	// NoPacked leaves VIRTIO_F_RING_PACKED out of what the guests are
	// offered: they then use split rings.
	NoPacked bool `json:"no_packed" yaml:"no_packed"`
	// MaxGuests is how many guests the NIC port can serve at once, each
	// on QueuePairs queue pairs of its own (default: as many as Guests
	// lists, at least 1). Guests added at runtime take a free slot.
	MaxGuests int         `json:"max_guests,omitempty" yaml:"max_guests,omitempty"`
	Guests    []GuestSpec `json:"guests" yaml:"guests"`
}

// GuestSpec is one guest: a vhost-user socket and what its front end may
// do.
type GuestSpec struct {
	Socket string `json:"socket" yaml:"socket"`
	// Client connects to a front end listening on Socket (QEMU
	// server=on) and reconnects when it goes away; otherwise zcnet
	// listens and the front end connects.
	Client bool `json:"client,omitempty" yaml:"client,omitempty"`
	// MemLimit caps the guest memory the front end may have zcnet map
	// and DMA-pin ("16G"); empty: vhost's default.
	MemLimit string `json:"mem_limit,omitempty" yaml:"mem_limit,omitempty"`
	// MAC is the guest's MAC (QEMU's -device virtio-net-pci,mac=...),
	// which the NIC's filter accepts from the start and the guest reads
	// from its virtio-net config space. Empty: the port learns the
	// guest's MAC from the source address of its first unicast-sourced
	// frame (ARP, neighbour discovery, DHCP) and follows a change.
	MAC string `json:"mac,omitempty" yaml:"mac,omitempty"`
	// Trusted lets the guest change a configured MAC (through its
	// control queue, or by sending from another address) and send from
	// any address, as `ip link set PF vf N trust on spoofchk off` does
	// for a VF. Untrusted (the default) with a MAC: the MAC is fixed and,
	// on a NIC port shared with other guests, the NIC drops frames the
	// guest sends from another address (tx_spoofed); without one the
	// learned MAC is followed and checked the same way.
	Trusted bool `json:"trusted,omitempty" yaml:"trusted,omitempty"`
	// VLAN (1 to 4094) puts the guest on an access VLAN, as `ip link set
	// PF vf N vlan V` does: on the wire its frames carry 802.1Q tag VLAN,
	// the guest sends and receives them untagged, and it receives only
	// frames tagged VLAN. The NIC port must run pools (the NIC inserts and
	// strips the tag per pool): a port with a VLAN guest listed, or with
	// max_guests above 1, does.
	VLAN uint16 `json:"vlan,omitempty" yaml:"vlan,omitempty"`
	// Migration offers the guest's front end live migration (vhost-user
	// dirty logging, VHOST_F_LOG_ALL with LOG_SHMFD, and SEND_RARP); unset
	// means on, false turns it off, and QEMU then refuses to migrate the
	// guest. Offering it changes nothing on the data path until QEMU
	// starts a migration (the engine looks for a dirty log whether or not
	// it is offered). Compare specs with Equal, which treats unset and
	// true alike.
	Migration *bool `json:"migration,omitempty" yaml:"migration,omitempty"`
	// Mode (octal, default 0600) and Group of the socket zcnet creates:
	// whoever can connect is the guest's front end. "0660" with the
	// group QEMU runs in (libvirt: kvm) lets a QEMU running as another
	// user connect. Not for Client, where the front end creates it.
	Mode  string `json:"mode,omitempty" yaml:"mode,omitempty"`
	Group string `json:"group,omitempty" yaml:"group,omitempty"`
}

// Migrates reports whether the guest is offered live migration (see
// Migration).
func (s GuestSpec) Migrates() bool { return s.Migration == nil || *s.Migration }

// Equal reports whether s and o configure a guest the same way.
func (s GuestSpec) Equal(o GuestSpec) bool {
	if s.Migrates() != o.Migrates() {
		return false
	}
	s.Migration, o.Migration = nil, nil
	return s == o
}

// guestConfig is a GuestSpec checked and parsed.
type guestConfig struct {
	GuestSpec
	memLimit uint64
	mac      [6]byte
	sock     vhost.SocketOptions
}

// Defaults for ring sizes and MTU, as testpmd's.
const (
	DefaultRingSize = 1024
	DefaultMTU      = 1500
	copyBufSize     = 2048
	maxQueuePairs   = 64 // the 82599's
)

// normalize fills in defaults and rejects what cannot be assembled, with
// an error that names the setting to change.
func (s *Spec) normalize() error {
	if len(s.NICs) == 0 {
		return errors.New("no NIC port: give --pci (or ports in the configuration)")
	}
	if s.Burst == 0 {
		s.Burst = 32
	}
	if s.Burst < 1 || s.Burst > 512 {
		return fmt.Errorf("burst %d: use 1 to 512", s.Burst)
	}
	sockets := map[string]bool{}
	pcis := map[string]bool{}
	for i := range s.NICs {
		p := &s.NICs[i]
		where := fmt.Sprintf("NIC port %d (%s)", i, p.PCI)
		for j := range p.Guests {
			g, err := checkGuest(p.Guests[j])
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if sockets[g.Socket] {
				return fmt.Errorf("vhost-user socket %s is given twice: each guest needs a socket of its own", g.Socket)
			}
			sockets[g.Socket] = true
		}
		if err := p.normalize(where); err != nil {
			return err
		}
		if p.PCI != "" && pcis[p.PCI] {
			return fmt.Errorf("NIC port %s is given twice: list its guests under one entry", p.PCI)
		}
		pcis[p.PCI] = true
	}
	return nil
}

// maxPools is how many guests of queuePairs queue pairs a NIC port can
// keep apart: the 82599 has 64 pools of 2 queues or 32 of 4.
func maxPools(queuePairs int) int {
	if queuePairs <= 2 {
		return 64
	}
	return 32
}

func (p *NICSpec) normalize(where string) error {
	if p.QueuePairs == 0 {
		p.QueuePairs = 1
	}
	if p.Rxd == 0 {
		p.Rxd = DefaultRingSize
	}
	if p.Txd == 0 {
		p.Txd = DefaultRingSize
	}
	if p.MTU == 0 {
		p.MTU = DefaultMTU
	}
	if p.MaxGuests == 0 {
		p.MaxGuests = max(1, len(p.Guests))
	}
	switch {
	case p.MaxGuests < len(p.Guests):
		return fmt.Errorf("%s: max_guests %d but %d guests listed", where, p.MaxGuests, len(p.Guests))
	case p.MaxGuests > 1 && p.QueuePairs != 1 && p.QueuePairs != 2 && p.QueuePairs != 4:
		// Each guest is a pool of the NIC, and RSS spreads a pool's
		// frames over a power of two of its queues.
		return fmt.Errorf("%s: %d queue pairs per guest: with several guests on a NIC port each gets 1, 2 or 4", where, p.QueuePairs)
	case p.MaxGuests > maxPools(p.QueuePairs):
		return fmt.Errorf("%s: %d guests with %d queue pairs each: the 82599 steers frames to at most %d guests of that size (its pools)", where, p.MaxGuests, p.QueuePairs, maxPools(p.QueuePairs))
	case p.QueuePairs < 1 || p.MaxGuests < 1 || p.QueuePairs*p.MaxGuests > maxQueuePairs:
		return fmt.Errorf("%s: %d queue pairs for each of %d guests: the 82599 has %d queue pairs (use 1 to %d per guest)",
			where, p.QueuePairs, p.MaxGuests, maxQueuePairs, maxQueuePairs/max(1, p.MaxGuests))
	case !ringSizeOK(p.Rxd):
		return fmt.Errorf("%s: --rxd %d: use a power of two from 64 to 4096", where, p.Rxd)
	case !ringSizeOK(p.Txd):
		return fmt.Errorf("%s: --txd %d: use a power of two from 64 to 4096", where, p.Txd)
	case p.MTU < 68 || p.MTU > 9710:
		return fmt.Errorf("%s: --mtu %d: use 68 to 9710", where, p.MTU)
	}
	return nil
}

// checkGuest parses a guest's settings, with errors that name the socket.
func checkGuest(s GuestSpec) (guestConfig, error) {
	g := guestConfig{GuestSpec: s}
	if s.Socket == "" {
		return g, errors.New("empty vhost-user socket path")
	}
	fail := func(err error) (guestConfig, error) {
		return g, fmt.Errorf("vhost-user socket %s: %w", s.Socket, err)
	}
	if s.MemLimit != "" {
		n, err := ParseMemSize(s.MemLimit)
		if err != nil {
			return fail(fmt.Errorf("mem_limit: %w", err))
		}
		if n < 2<<20 {
			// Below one huge page every guest is refused: surely a typo
			// (a missing suffix).
			return fail(fmt.Errorf("mem_limit %s is under 2 MiB, which no guest fits in: did you mean %sG?", s.MemLimit, s.MemLimit))
		}
		g.memLimit = n
	}
	if s.MAC != "" {
		m, err := ParseGuestMAC(s.MAC)
		if err != nil {
			return fail(err)
		}
		g.mac = m
	}
	if s.VLAN > 4094 {
		return fail(fmt.Errorf("vlan %d: use 1 to 4094 (0: untagged)", s.VLAN))
	}
	if s.Mode != "" || s.Group != "" {
		if s.Client {
			return fail(errors.New("mode and group are for a socket zcnet creates; in client mode the front end creates it"))
		}
		g.sock.Group = s.Group
		if s.Mode != "" {
			m, err := vhost.ParseSocketMode(s.Mode)
			if err != nil {
				return fail(err)
			}
			g.sock.Mode = m
		}
	}
	return g, nil
}

func ringSizeOK(n int) bool { return n >= 64 && n <= 4096 && n&(n-1) == 0 }

// ParseGuestMAC accepts a guest's MAC as a station address: 6 bytes,
// unicast, not zero (the engine takes zero for "learn it").
func ParseGuestMAC(s string) ([6]byte, error) {
	var m [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("guest MAC %q: give 6 bytes as 52:54:00:12:34:56", s)
	}
	copy(m[:], hw)
	switch {
	case m == [6]byte{}:
		return m, fmt.Errorf("guest MAC %s is all zero: give the guest's own address, or none to learn it from the guest's frames", hw)
	case m[0]&1 != 0:
		return m, fmt.Errorf("guest MAC %s is a multicast address (the first byte is odd): a guest's own address is unicast, e.g. 52:54:00:12:34:56", hw)
	}
	return m, nil
}

// ParseMemSize reads a size in bytes with an optional binary suffix (K, M,
// G, T, optionally followed by "iB" or "B"): "64G", "512MiB", "1073741824".
func ParseMemSize(s string) (uint64, error) {
	num := strings.TrimSpace(s)
	for _, unit := range []string{"iB", "B"} {
		if n, ok := strings.CutSuffix(num, unit); ok && n != "" && strings.ContainsAny(n[len(n)-1:], "KMGTkmgt") {
			num = n
			break
		}
	}
	shift := 0
	if num != "" {
		if i := strings.IndexByte("KMGT", num[len(num)-1]&^0x20); i >= 0 {
			shift = 10 * (i + 1)
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: give bytes, optionally with a K, M, G or T suffix", s)
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// guestOffer is the virtio feature set a NIC port's guests are offered:
// vhost's defaults and packed rings, which the zero-copy engine serves as
// it does split ones. IN_ORDER is never offered: the engine completes RX
// buffers out of avail order (a frame held in a host buffer is delivered
// into a chain popped after chains already on the NIC, and the chains of
// dropped frames are posted again), which IN_ORDER forbids.
func guestOffer(ps NICSpec) uint64 {
	if ps.NoPacked {
		return vhost.DefaultFeatures
	}
	return vhost.DefaultFeatures | vhost.FRingPacked
}
