package sim

import "encoding/binary"

// Receive-side scaling: the Toeplitz hash over the fields MRQC selects,
// keyed by RSSRK, and the 128-entry redirection table RETA.

// MRQC.MRQE values that compute an RSS hash (alone or with DCB/VMDq).
func rssMode(mrqe uint32) bool {
	switch mrqe {
	case 0x1, 0x4, 0x5, 0xA, 0xB:
		return true
	}
	return false
}

// MRQC hash field enables (bits 31:16) and the RSS types the descriptor
// reports for them.
const (
	mrqcTCPIPv4 = 1 << 16
	mrqcIPv4    = 1 << 17
	mrqcIPv6    = 1 << 20
	mrqcTCPIPv6 = 1 << 21
	mrqcUDPIPv4 = 1 << 22
	mrqcUDPIPv6 = 1 << 23

	rssTypeTCPIPv4 = 1
	rssTypeIPv4    = 2
	rssTypeTCPIPv6 = 3
	rssTypeIPv6    = 5
	rssTypeUDPIPv4 = 7
	rssTypeUDPIPv6 = 8
)

const rssKeyLen = 40

// maxRSSInput is the longest hash input: two IPv6 addresses and two ports.
const maxRSSInput = 36

// toeplitz is a byte-at-a-time form of the Toeplitz hash: entry [i][b] is
// the XOR of the 32-bit key windows selected by the set bits of byte value
// b at input position i.
type toeplitz [maxRSSInput][256]uint32

func (t *toeplitz) setKey(key *[rssKeyLen]byte) {
	window := func(bit int) uint32 { // the 32 key bits starting at bit
		var w uint32
		for i := 0; i < 32; i++ {
			k := bit + i
			w = w<<1 | uint32(key[k/8]>>(7-k%8)&1)
		}
		return w
	}
	for i := range t {
		var w [8]uint32
		for j := range w {
			w[j] = window(8*i + j) // input bit j of byte i, MSB first
		}
		for b := 0; b < 256; b++ {
			var h uint32
			for j := 0; j < 8; j++ {
				if b&(0x80>>j) != 0 {
					h ^= w[j]
				}
			}
			t[i][b] = h
		}
	}
}

func (t *toeplitz) hash(in []byte) uint32 {
	var h uint32
	for i, b := range in {
		h ^= t[i][b]
	}
	return h
}

// refreshKey rebuilds the hash table after RSSRK changed. RSSRK(n) holds key
// bytes 4n..4n+3, byte 4n in bits 7:0 (as Linux and DPDK load it).
func (p *PF) refreshKey() {
	if p.rssOK.Load() {
		return
	}
	// Mark valid before reading the key: a write racing with the rebuild
	// marks it stale again.
	p.rssOK.Store(true)
	var key [rssKeyLen]byte
	for i := 0; i < rssKeyLen/4; i++ {
		binary.LittleEndian.PutUint32(key[4*i:], p.reg(regRSSRK0+4*uint32(i)))
	}
	p.rx.rss.setKey(&key)
}

// rssHash returns the hash and RSS type for frame f, or type 0 when MRQC
// enables no field that matches the packet.
func (p *PF) rssHash(f []byte, pi *pktInfo, mrqc uint32) (uint32, uint32) {
	in := p.rx.rssIn[:0]
	var typ uint32
	ports := pi.l4 != 0 && len(f) >= pi.l4+4
	switch {
	case pi.ipv4:
		ip := f[pi.l3:]
		in = append(in, ip[12:20]...)
		switch {
		case ports && pi.proto == protoTCP && mrqc&mrqcTCPIPv4 != 0:
			typ = rssTypeTCPIPv4
		case ports && pi.proto == protoUDP && mrqc&mrqcUDPIPv4 != 0:
			typ = rssTypeUDPIPv4
		case mrqc&mrqcIPv4 != 0:
			typ = rssTypeIPv4
		}
	case pi.ipv6 && !pi.ipv6Ext:
		ip := f[pi.l3:]
		in = append(in, ip[8:40]...)
		switch {
		case ports && pi.proto == protoTCP && mrqc&mrqcTCPIPv6 != 0:
			typ = rssTypeTCPIPv6
		case ports && pi.proto == protoUDP && mrqc&mrqcUDPIPv6 != 0:
			typ = rssTypeUDPIPv6
		case mrqc&mrqcIPv6 != 0:
			typ = rssTypeIPv6
		}
	}
	switch typ {
	case 0:
		return 0, 0
	case rssTypeTCPIPv4, rssTypeUDPIPv4, rssTypeTCPIPv6, rssTypeUDPIPv6:
		in = append(in, f[pi.l4:pi.l4+4]...) // source port, destination port
	}
	p.refreshKey()
	return p.rx.rss.hash(in), typ
}

// retaQueue maps a hash to a queue: RETA entry hash[6:0], whose bits 3:0
// name the queue.
func (p *PF) retaQueue(hash uint32) int {
	i := hash & 0x7F
	return int(p.reg(regRETA0+4*(i/4)) >> (8 * (i % 4)) & 0xF)
}
