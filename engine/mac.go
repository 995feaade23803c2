package engine

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/zcnet/zcnet/vhost"
)

// relearnEvery is how many frames from one source address the channel sees
// before it follows the guest to another one. A guest changes its MAC
// rarely (ip link set address, a bond failing over); a guest that
// alternates source addresses on purpose would otherwise make the lcore
// rewrite the NIC's filter on every frame.
const relearnEvery = 64

// macState is the guest's MAC as the NIC's filter knows it.
type macState struct {
	filter MACFilter
	static bool
	// cur is the address the filter accepts (zero: none yet), packed in
	// the low 48 bits so that comparing it costs one load; pub is cur for
	// other goroutines.
	cur    uint64
	pub    atomic.Uint64
	frames int // frames from another source since the last change
}

func (m *macState) init(f MACFilter, initial [6]byte, follow bool) error {
	m.filter = f
	if initial == ([6]byte{}) {
		return nil
	}
	if initial[0]&1 != 0 {
		return fmt.Errorf("engine: guest MAC %s is a multicast address", net.HardwareAddr(initial[:]))
	}
	m.static = !follow
	return m.set(initial)
}

func (m *macState) set(mac [6]byte) error {
	var prev [6]byte
	putMAC(prev[:], m.cur)
	if m.filter != nil {
		if err := m.filter.AcceptGuestMAC(prev, mac); err != nil {
			return fmt.Errorf("engine: accepting guest MAC %s on the NIC: %w", net.HardwareAddr(mac[:]), err)
		}
	}
	m.cur = macBits(mac[:])
	m.pub.Store(m.cur)
	m.frames = 0
	return nil
}

// drop has the filter stop accepting the guest's address.
func (m *macState) drop() error {
	if m.filter == nil || m.cur == 0 {
		return nil
	}
	var prev [6]byte
	putMAC(prev[:], m.cur)
	if err := m.filter.AcceptGuestMAC(prev, [6]byte{}); err != nil {
		return fmt.Errorf("engine: releasing guest MAC %s on the NIC: %w", net.HardwareAddr(prev[:]), err)
	}
	m.cur = 0
	m.pub.Store(0)
	return nil
}

func macBits(b []byte) uint64 {
	return uint64(binary.BigEndian.Uint16(b[0:2]))<<32 | uint64(binary.BigEndian.Uint32(b[2:6]))
}

func putMAC(b []byte, v uint64) {
	binary.BigEndian.PutUint16(b[0:2], uint16(v>>32))
	binary.BigEndian.PutUint32(b[2:6], uint32(v))
}

// GuestMAC is the guest's MAC the channel has the NIC accept (zero while none
// is known), and whether it came from the configuration.
func (p *Channel) GuestMAC() (mac [6]byte, static bool) {
	putMAC(mac[:], p.mac.pub.Load())
	return mac, p.mac.static
}

// learnMAC looks at the source address of a frame the guest transmits
// (chain c, frame after the virtio-net header). A unicast source other than
// the one accepted becomes the guest's MAC, at most once per relearnEvery
// frames.
func (p *Channel) learnMAC(c *vhost.Chain) {
	m := &p.mac
	if m.static {
		return
	}
	off := p.hdrLen + 6
	var src uint64
	if b := c.Segs[0].Buf; len(b) >= off+6 {
		src = macBits(b[off : off+6])
	} else {
		var a [6]byte
		if vhost.Gather(a[:], c.Segs, off) < 6 {
			return
		}
		src = macBits(a[:])
	}
	p.learnSource(src)
}

// learnSource is learnMAC for a frame whose source address is src (as
// macBits packs it). The common case, the address already learned, is
// small enough to be inlined into the per-frame loops; the rest is
// relearn's.
func (p *Channel) learnSource(src uint64) {
	if m := &p.mac; src == m.cur {
		m.frames = 0
	} else {
		p.relearn(src)
	}
}

// relearn is learnSource for a frame from another address than the one
// learned.
func (p *Channel) relearn(src uint64) {
	m := &p.mac
	if src == 0 || src&(1<<40) != 0 { // not a station's address
		return
	}
	if m.frames++; m.cur != 0 && m.frames < relearnEvery {
		return
	}
	var mac [6]byte
	putMAC(mac[:], src)
	if err := m.set(mac); err != nil {
		p.st.add(cMACFilterErrors, 1)
		m.frames = 0
	}
}
