package vhost

import (
	"encoding/binary"
	"errors"
)

// virtio-net header flags and GSO types.
const (
	NetHdrFNeedsCsum = 0x1
	NetHdrFDataValid = 0x2
	NetHdrFRSCInfo   = 0x4

	NetHdrGSONone  = 0
	NetHdrGSOTCPv4 = 1
	NetHdrGSOUDP   = 3
	NetHdrGSOTCPv6 = 4
	NetHdrGSOECN   = 0x80
)

// Header sizes: VERSION_1 or MRG_RXBUF use the 12-byte layout with
// num_buffers; a legacy device without MRG_RXBUF uses 10 bytes.
const (
	NetHeaderSize       = 12
	LegacyNetHeaderSize = 10
)

// NetHeader is struct virtio_net_hdr_mrg_rxbuf, the header in front of
// every frame on a virtio-net queue.
type NetHeader struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // Ethernet+IP+L4 header length (a hint)
	GSOSize    uint16 // MSS of a GSO super-frame
	CsumStart  uint16 // offset where checksumming starts (NEEDS_CSUM)
	CsumOffset uint16 // where to store the checksum, from CsumStart
	NumBuffers uint16 // RX: how many buffers this packet used
}

// ErrShortNetHeader is returned when a buffer is too short for the header.
var ErrShortNetHeader = errors.New("vhost: buffer shorter than the virtio-net header")

// NetHeaderLen is the header size for the negotiated features.
func NetHeaderLen(features uint64) int {
	if features&(FVersion1|NetFMrgRxbuf) != 0 {
		return NetHeaderSize
	}
	return LegacyNetHeaderSize
}

// Encode writes h into b using size bytes (10 or 12) and returns size.
func (h *NetHeader) Encode(b []byte, size int) (int, error) {
	if len(b) < size {
		return 0, ErrShortNetHeader
	}
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.LittleEndian.PutUint16(b[2:], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:], h.CsumOffset)
	if size >= NetHeaderSize {
		binary.LittleEndian.PutUint16(b[10:], h.NumBuffers)
	}
	return size, nil
}

// DecodeNetHeader reads a header of size bytes (10 or 12) from b.
func DecodeNetHeader(b []byte, size int) (NetHeader, error) {
	if len(b) < size || size < LegacyNetHeaderSize {
		return NetHeader{}, ErrShortNetHeader
	}
	h := NetHeader{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:]),
	}
	if size >= NetHeaderSize {
		h.NumBuffers = binary.LittleEndian.Uint16(b[10:])
	}
	return h, nil
}
