package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/zcnet/zcnet/internal/checksum"
)

// Header sizes and protocol numbers of the frames this package builds and
// parses. Frames handed through an Endpoint never carry the 4-byte FCS.
const (
	EthernetHeaderLen = 14
	VLANTagLen        = 4
	IPv4HeaderLen     = 20 // without options
	UDPHeaderLen      = 8
	FCSLen            = 4

	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100

	IPProtoICMP = 1
	IPProtoUDP  = 17
)

// MAC is an Ethernet address. An array, unlike net.HardwareAddr, so that
// building and comparing addresses allocates nothing.
type MAC [6]byte

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// UDP4Header describes the addressing of an Ethernet/IPv4/UDP frame.
type UDP4Header struct {
	DstMAC, SrcMAC   MAC
	SrcIP, DstIP     [4]byte
	SrcPort, DstPort uint16
	TTL              uint8 // 0 means 64
}

// UDP4FrameLen is the length (without FCS) of a frame carrying payloadLen
// bytes of UDP payload.
func UDP4FrameLen(payloadLen int) int {
	return EthernetHeaderLen + IPv4HeaderLen + UDPHeaderLen + payloadLen
}

// PutUDP4 writes an Ethernet/IPv4/UDP frame with valid IPv4 and UDP
// checksums into frame, whose length fixes the payload length: the payload is
// frame[UDP4FrameLen(0):] and must already be in place, since the UDP
// checksum covers it. The IPv4 header has no options, DF set and ID 0 (an
// atomic datagram, RFC 6864).
func PutUDP4(frame []byte, h UDP4Header) {
	putUDP4Headers(frame, h)
	ip := frame[EthernetHeaderLen:]
	binary.BigEndian.PutUint16(ip[10:], checksum.Finish(checksum.Add(0, ip[:IPv4HeaderLen])))
	udp := ip[IPv4HeaderLen:]
	sum := checksum.PseudoIPv4(h.SrcIP, h.DstIP, IPProtoUDP, len(udp))
	binary.BigEndian.PutUint16(udp[6:], udpChecksumField(checksum.Add(sum, udp)))
}

// putUDP4Headers writes the Ethernet, IPv4 and UDP headers with both
// checksum fields zero.
func putUDP4Headers(frame []byte, h UDP4Header) {
	copy(frame[0:6], h.DstMAC[:])
	copy(frame[6:12], h.SrcMAC[:])
	binary.BigEndian.PutUint16(frame[12:], EtherTypeIPv4)
	ip := frame[EthernetHeaderLen:]
	ttl := h.TTL
	if ttl == 0 {
		ttl = 64
	}
	ip[0] = 0x45 // version 4, 5 words of header
	ip[1] = 0    // DSCP/ECN
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 0)      // ID
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF, fragment offset 0
	ip[8] = ttl
	ip[9] = IPProtoUDP
	binary.BigEndian.PutUint16(ip[10:], 0)
	copy(ip[12:16], h.SrcIP[:])
	copy(ip[16:20], h.DstIP[:])
	udp := ip[IPv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:], h.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], h.DstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	binary.BigEndian.PutUint16(udp[6:], 0)
}

// udpChecksumField turns a running sum over pseudo-header and datagram into
// the value to store: a computed 0 is sent as 0xffff, because 0 in the field
// means "no checksum" (RFC 768).
func udpChecksumField(sum uint64) uint16 {
	c := checksum.Finish(sum)
	if c == 0 {
		return 0xffff
	}
	return c
}

// Errors ParseUDP4 reports. They are values, so a parse failure allocates
// nothing.
var (
	ErrTruncated  = errors.New("frame truncated")
	ErrNotIPv4    = errors.New("not an IPv4 frame")
	ErrBadIPv4    = errors.New("malformed IPv4 header")
	ErrFragment   = errors.New("IPv4 fragment")
	ErrNotUDP     = errors.New("not a UDP datagram")
	ErrBadUDPSize = errors.New("UDP length disagrees with IPv4 length")
)

// UDP4 is a parsed Ethernet/IPv4/UDP frame. Payload aliases the frame.
type UDP4 struct {
	DstMAC, SrcMAC   MAC
	VLAN             uint16 // 802.1Q TCI, valid when Tagged
	Tagged           bool
	SrcIP, DstIP     [4]byte
	SrcPort, DstPort uint16
	Payload          []byte
	// IPChecksumOK reports that the IPv4 header checksum verifies.
	IPChecksumOK bool
	// UDPChecksumPresent is false when the sender left the UDP checksum
	// field 0, which IPv4 allows; UDPChecksumOK is then true.
	UDPChecksumPresent bool
	UDPChecksumOK      bool
}

// ParseUDP4 parses an Ethernet frame (without FCS, optionally with one
// 802.1Q tag) carrying an unfragmented IPv4/UDP datagram and verifies the
// IPv4 header checksum and the UDP checksum independently of each other.
// Bytes after the IPv4 total length (Ethernet padding) are ignored.
func ParseUDP4(frame []byte) (UDP4, error) {
	var p UDP4
	if len(frame) < EthernetHeaderLen {
		return p, ErrTruncated
	}
	copy(p.DstMAC[:], frame[0:6])
	copy(p.SrcMAC[:], frame[6:12])
	etherType := binary.BigEndian.Uint16(frame[12:])
	ip := frame[EthernetHeaderLen:]
	if etherType == EtherTypeVLAN {
		if len(ip) < VLANTagLen {
			return p, ErrTruncated
		}
		p.Tagged = true
		p.VLAN = binary.BigEndian.Uint16(ip[0:])
		etherType = binary.BigEndian.Uint16(ip[2:])
		ip = ip[VLANTagLen:]
	}
	if etherType != EtherTypeIPv4 {
		return p, ErrNotIPv4
	}
	if len(ip) < IPv4HeaderLen {
		return p, ErrTruncated
	}
	if ip[0]>>4 != 4 {
		return p, ErrNotIPv4
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < IPv4HeaderLen || total < ihl {
		return p, ErrBadIPv4
	}
	if total > len(ip) {
		return p, ErrTruncated
	}
	ip = ip[:total] // drop Ethernet padding
	p.IPChecksumOK = checksum.Fold(checksum.Add(0, ip[:ihl])) == 0xffff
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 { // MF or a fragment offset
		return p, ErrFragment
	}
	if ip[9] != IPProtoUDP {
		return p, ErrNotUDP
	}
	copy(p.SrcIP[:], ip[12:16])
	copy(p.DstIP[:], ip[16:20])
	udp := ip[ihl:]
	if len(udp) < UDPHeaderLen {
		return p, ErrTruncated
	}
	if int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		return p, ErrBadUDPSize
	}
	p.SrcPort = binary.BigEndian.Uint16(udp[0:])
	p.DstPort = binary.BigEndian.Uint16(udp[2:])
	p.Payload = udp[UDPHeaderLen:]
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		p.UDPChecksumOK = true
		return p, nil
	}
	p.UDPChecksumPresent = true
	sum := checksum.PseudoIPv4(p.SrcIP, p.DstIP, IPProtoUDP, len(udp))
	p.UDPChecksumOK = checksum.Fold(checksum.Add(sum, udp)) == 0xffff
	return p, nil
}

// ipv4Bytes returns the four bytes of an IPv4 (or IPv4-mapped) address.
func ipv4Bytes(a netip.Addr, what string) ([4]byte, error) {
	if !a.Unmap().Is4() {
		return [4]byte{}, fmt.Errorf("%s %v is not an IPv4 address", what, a)
	}
	return a.Unmap().As4(), nil
}
