// Package checksum computes the Internet checksum (RFC 1071) that IPv4,
// ICMP, UDP and TCP carry: the driver seeds TSO checksums with it, the
// simulated 82599 computes and verifies offloaded checksums, the loopback
// device recomputes them for guests that asked, and the wire generator and
// sink build and check frames. One implementation, tested against the RFC's
// definition, so the device model and the code it checks cannot disagree
// through two different bugs.
package checksum

import (
	"encoding/binary"
	"math/bits"
)

// Add adds b to a running ones-complement sum as RFC 1071 defines
// it: b is read as big-endian 16-bit words, an odd last byte padded with
// zero. b must start at an even offset of the checksummed region. The
// result is below 2^32: sums of separate regions, and 32-bit values, can be
// added with + as long as fewer than 2^32 of them are.
//
// The bytes are added as 32-bit words into 64-bit accumulators, which
// cannot overflow for any slice shorter than 16 GiB, so the loop needs no
// carry handling; that is equivalent because 2^16 ≡ 1 modulo 2^16-1, so
// where a 16-bit word sits in the wide accumulator does not change the
// folded result. Two accumulators let the additions overlap.
func Add(sum uint64, b []byte) uint64 {
	var s0, s1 uint64
	for len(b) >= 16 {
		s0 += uint64(binary.BigEndian.Uint32(b[0:])) + uint64(binary.BigEndian.Uint32(b[8:]))
		s1 += uint64(binary.BigEndian.Uint32(b[4:])) + uint64(binary.BigEndian.Uint32(b[12:]))
		b = b[16:]
	}
	for len(b) >= 4 {
		s0 += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s1 += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s1 += uint64(b[0]) << 8
	}
	// Fold everything (sum may be any 64-bit value) to below 2^32 so that
	// callers may add a handful of sums and 32-bit values with plain +.
	var carry uint64
	s0, carry = bits.Add64(s0, s1, 0)
	s0, carry = bits.Add64(s0, sum, carry)
	s0 += carry // 2^64 ≡ 1; cannot carry again, s0 just wrapped
	s0 = s0>>32 + s0&0xffffffff
	return s0>>32 + s0&0xffffffff
}

// Fold folds a running sum to 16 bits without complementing it.
func Fold(sum uint64) uint16 {
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return uint16(sum)
}

// Finish folds a running sum and complements it: the value written
// into an IPv4, ICMP or UDP checksum field. A region whose checksum field
// already holds the right value finishes to 0.
func Finish(sum uint64) uint16 { return ^Fold(sum) }

// PseudoIPv4 is the running sum of the IPv4 pseudo-header that the UDP
// and TCP checksums cover (RFC 768): addresses, protocol and the L4 length.
func PseudoIPv4(src, dst [4]byte, proto uint8, l4Len int) uint64 {
	return uint64(binary.BigEndian.Uint32(src[:])) +
		uint64(binary.BigEndian.Uint32(dst[:])) +
		uint64(proto) + uint64(l4Len)
}
