package ixgbe

import (
	"encoding/binary"
	"fmt"
)

// defaultRSSKey is the Toeplitz key from Microsoft's RSS specification,
// whose published test vectors make the hash checkable.
var defaultRSSKey = [rssKeyLen]byte{
	0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2,
	0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
	0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4,
	0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
	0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
}

// DefaultRSSKey returns the key RSS uses unless Config.RSSKey says
// otherwise.
func DefaultRSSKey() [40]byte { return defaultRSSKey }

// roundRobinRETA spreads the 128 redirection entries over n queues.
func roundRobinRETA(n int) [retaEntries]uint8 {
	var t [retaEntries]uint8
	for i := range t {
		t[i] = uint8(i % n)
	}
	return t
}

// configureRSS loads the key and table and turns RSS on, in the queue
// mode mrqe (MRQC.MRQE), for TCP, UDP and plain IP over IPv4 and IPv6.
// Without pools a frame's queue is RETA[hash & 127]; with pools the
// entry's low bits pick a queue of the frame's pool.
func (p *Port) configureRSS(mrqe uint32, key [rssKeyLen]byte, reta [retaEntries]uint8) {
	// The key is loaded a dword at a time, byte 0 in the low byte.
	for i := range rssKeyLen / 4 {
		p.write(regRSSRK+4*uint32(i), binary.LittleEndian.Uint32(key[4*i:]))
	}
	p.writeRETA(reta)
	p.write(regMRQC, mrqe|mrqcFieldIPv4|mrqcFieldTCPv4|mrqcFieldUDPv4|
		mrqcFieldIPv6|mrqcFieldTCPv6|mrqcFieldUDPv6)
}

// writeRETA writes the 128 one-byte entries, four per register, entry 4i
// in the low byte of RETA(i).
func (p *Port) writeRETA(reta [retaEntries]uint8) {
	for i := range retaEntries / 4 {
		p.write(regRETA+4*uint32(i), binary.LittleEndian.Uint32(reta[4*i:]))
	}
}

// SetRETA reprograms the RSS redirection table; every entry must name one
// of the port's RX queues. RSS must have been enabled in Config.
func (p *Port) SetRETA(reta [128]uint8) error {
	if !p.cfg.RSS {
		return fmt.Errorf("ixgbe: RSS is off on this port; open it with Config.RSS")
	}
	for i, q := range reta {
		if int(q) >= len(p.rx) {
			return fmt.Errorf("ixgbe: RETA entry %d names queue %d; the port has %d RX queues", i, q, len(p.rx))
		}
	}
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	p.writeRETA(reta)
	return nil
}
