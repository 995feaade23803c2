package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Request is a vhost-user message type (front end to back end).
type Request uint32

// Front-end requests, numbered as in QEMU's docs/interop/vhost-user.rst.
const (
	ReqGetFeatures         Request = 1
	ReqSetFeatures         Request = 2
	ReqSetOwner            Request = 3
	ReqResetOwner          Request = 4
	ReqSetMemTable         Request = 5
	ReqSetLogBase          Request = 6
	ReqSetLogFD            Request = 7
	ReqSetVringNum         Request = 8
	ReqSetVringAddr        Request = 9
	ReqSetVringBase        Request = 10
	ReqGetVringBase        Request = 11
	ReqSetVringKick        Request = 12
	ReqSetVringCall        Request = 13
	ReqSetVringErr         Request = 14
	ReqGetProtocolFeatures Request = 15
	ReqSetProtocolFeatures Request = 16
	ReqGetQueueNum         Request = 17
	ReqSetVringEnable      Request = 18
	ReqSendRARP            Request = 19
	ReqNetSetMTU           Request = 20
	ReqSetBackendReqFD     Request = 21
	ReqIOTLBMsg            Request = 22
	ReqSetVringEndian      Request = 23
	ReqGetConfig           Request = 24
	ReqSetConfig           Request = 25
	ReqGetInflightFD       Request = 31
	ReqSetInflightFD       Request = 32
	ReqResetDevice         Request = 34
	ReqVringKick           Request = 35
	ReqGetMaxMemSlots      Request = 36
	ReqAddMemReg           Request = 37
	ReqRemMemReg           Request = 38
	ReqSetStatus           Request = 39
	ReqGetStatus           Request = 40
)

var requestNames = map[Request]string{
	ReqGetFeatures: "GET_FEATURES", ReqSetFeatures: "SET_FEATURES",
	ReqSetOwner: "SET_OWNER", ReqResetOwner: "RESET_OWNER",
	ReqSetMemTable: "SET_MEM_TABLE", ReqSetLogBase: "SET_LOG_BASE",
	ReqSetLogFD: "SET_LOG_FD", ReqSetVringNum: "SET_VRING_NUM",
	ReqSetVringAddr: "SET_VRING_ADDR", ReqSetVringBase: "SET_VRING_BASE",
	ReqGetVringBase: "GET_VRING_BASE", ReqSetVringKick: "SET_VRING_KICK",
	ReqSetVringCall: "SET_VRING_CALL", ReqSetVringErr: "SET_VRING_ERR",
	ReqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
	ReqSetProtocolFeatures: "SET_PROTOCOL_FEATURES",
	ReqGetQueueNum:         "GET_QUEUE_NUM", ReqSetVringEnable: "SET_VRING_ENABLE",
	ReqSendRARP: "SEND_RARP", ReqNetSetMTU: "NET_SET_MTU",
	ReqSetBackendReqFD: "SET_BACKEND_REQ_FD", ReqIOTLBMsg: "IOTLB_MSG",
	ReqSetVringEndian: "SET_VRING_ENDIAN", ReqGetConfig: "GET_CONFIG",
	ReqSetConfig: "SET_CONFIG", ReqGetInflightFD: "GET_INFLIGHT_FD",
	ReqSetInflightFD: "SET_INFLIGHT_FD", ReqResetDevice: "RESET_DEVICE",
	ReqVringKick: "VRING_KICK", ReqGetMaxMemSlots: "GET_MAX_MEM_SLOTS",
	ReqAddMemReg: "ADD_MEM_REG", ReqRemMemReg: "REM_MEM_REG",
	ReqSetStatus: "SET_STATUS", ReqGetStatus: "GET_STATUS",
}

func (r Request) String() string {
	if n, ok := requestNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", uint32(r))
}

// Header flags.
const (
	FlagVersion   = 0x1 // bits 0-1: protocol version, always 1
	FlagReply     = 0x4 // set on every message the back end sends back
	FlagNeedReply = 0x8 // REPLY_ACK: the front end wants a u64 status
	flagKnown     = 0x3 | FlagReply | FlagNeedReply
)

// HeaderSize is the size of the fixed message header.
const HeaderSize = 12

// MaxPayload caps a message payload. The largest legitimate payload is
// SET_MEM_TABLE with 8 regions (264 bytes) or a GET_CONFIG of up to
// 4 KiB - 0x100; rust-vmm uses the same 4 KiB bound.
const MaxPayload = 4096

// MaxFDs is how many descriptors one message may carry
// (VHOST_MEMORY_BASELINE_NREGIONS).
const MaxFDs = 8

// Payload sizes.
const (
	sizeU64        = 8
	sizeVringState = 8
	sizeVringAddr  = 40
	sizeRegion     = 32
	sizeMemHeader  = 8
	sizeLog        = 16
	sizeConfigHdr  = 12
	sizeMemRegMsg  = 8 + sizeRegion
)

// Header is the fixed 12-byte vhost-user message header.
type Header struct {
	Request Request
	Flags   uint32
	Size    uint32
}

// Errors from message parsing. They describe a malformed message: the back
// end logs them and refuses the message.
var (
	ErrShortMessage = errors.New("vhost: message shorter than its header")
	ErrBadVersion   = errors.New("vhost: header version is not 1 or reserved flag bits are set")
	ErrTooLarge     = errors.New("vhost: payload larger than 4 KiB")
	ErrBadSize      = errors.New("vhost: payload size wrong for the request")
	ErrBadFDCount   = errors.New("vhost: wrong number of file descriptors for the request")
)

// DecodeHeader parses and checks a message header.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, ErrShortMessage
	}
	h := Header{
		Request: Request(binary.NativeEndian.Uint32(b[0:])),
		Flags:   binary.NativeEndian.Uint32(b[4:]),
		Size:    binary.NativeEndian.Uint32(b[8:]),
	}
	if h.Flags&0x3 != FlagVersion || h.Flags&^uint32(flagKnown) != 0 {
		return h, fmt.Errorf("%w (flags %#x)", ErrBadVersion, h.Flags)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("%w (%d bytes)", ErrTooLarge, h.Size)
	}
	return h, nil
}

// EncodeHeader writes h into b[:HeaderSize].
func EncodeHeader(b []byte, h Header) {
	binary.NativeEndian.PutUint32(b[0:], uint32(h.Request))
	binary.NativeEndian.PutUint32(b[4:], h.Flags)
	binary.NativeEndian.PutUint32(b[8:], h.Size)
}

// Message is one decoded request: header, payload and the descriptors that
// came with it. The receiver owns FDs and must close the ones it does not
// keep.
type Message struct {
	Header
	Payload []byte
	FDs     []int
}

// VringState is the payload of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE.
type VringState struct {
	Index uint32
	Num   uint32
}

// VringAddr is the payload of SET_VRING_ADDR. Desc, Used and Avail are
// front-end virtual addresses; Log is a guest physical address.
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// RegionDesc is one memory region as the front end describes it.
type RegionDesc struct {
	GuestPhysAddr uint64
	Size          uint64
	UserAddr      uint64
	MmapOffset    uint64
}

// ConfigPayload is the payload of GET_CONFIG/SET_CONFIG.
type ConfigPayload struct {
	Offset uint32
	Size   uint32
	Flags  uint32
	Data   []byte
}

// VringFLog is SET_VRING_ADDR's flag VHOST_VRING_F_LOG: the device logs
// its used ring writes at VringAddr.Log (a guest physical address).
const VringFLog = 1 << 0

// EncodeLog returns a SET_LOG_BASE payload: the log's size in bytes and
// its offset in the file sent with it.
func EncodeLog(size, offset uint64) []byte {
	b := make([]byte, sizeLog)
	binary.NativeEndian.PutUint64(b, size)
	binary.NativeEndian.PutUint64(b[8:], offset)
	return b
}

// Vring file payload (SET_VRING_KICK/CALL/ERR): index in bits 0-7, "no fd"
// in bit 8.
const (
	vringIndexMask = 0xff
	vringNoFD      = 1 << 8
)

// expectedPayload is the exact payload size of fixed-size requests, or -1
// for variable ones checked by their decoder.
func expectedPayload(r Request) int {
	switch r {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetQueueNum, ReqGetStatus,
		ReqGetMaxMemSlots, ReqSetOwner, ReqResetOwner, ReqResetDevice, ReqSetLogFD:
		return -1 // no payload needed; tolerate one (QEMU sends a zero u64 for some)
	case ReqSetFeatures, ReqSetProtocolFeatures, ReqSetVringKick, ReqSetVringCall,
		ReqSetVringErr, ReqSetStatus, ReqSetBackendReqFD, ReqSendRARP:
		return sizeU64
	case ReqSetVringNum, ReqSetVringBase, ReqGetVringBase, ReqSetVringEnable:
		return sizeVringState
	case ReqSetVringAddr:
		return sizeVringAddr
	case ReqSetLogBase:
		return sizeLog
	case ReqAddMemReg, ReqRemMemReg:
		return sizeMemRegMsg
	case ReqGetInflightFD, ReqSetInflightFD:
		return sizeInflight
	}
	return -1
}

// checkSize validates the payload size of m for its request.
func checkSize(m *Message) error {
	want := expectedPayload(m.Request)
	if want >= 0 && int(m.Size) != want {
		return fmt.Errorf("%w: %v carries %d bytes, want %d", ErrBadSize, m.Request, m.Size, want)
	}
	if want < 0 {
		switch m.Request {
		case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetQueueNum, ReqGetStatus,
			ReqGetMaxMemSlots, ReqSetOwner, ReqResetOwner, ReqResetDevice, ReqSetLogFD:
			if m.Size != 0 && m.Size != sizeU64 {
				return fmt.Errorf("%w: %v carries %d bytes", ErrBadSize, m.Request, m.Size)
			}
		}
	}
	return nil
}

func u64(p []byte) uint64 { return binary.NativeEndian.Uint64(p) }

func decodeVringState(p []byte) VringState {
	return VringState{Index: binary.NativeEndian.Uint32(p), Num: binary.NativeEndian.Uint32(p[4:])}
}

func decodeVringAddr(p []byte) VringAddr {
	return VringAddr{
		Index: binary.NativeEndian.Uint32(p),
		Flags: binary.NativeEndian.Uint32(p[4:]),
		Desc:  u64(p[8:]),
		Used:  u64(p[16:]),
		Avail: u64(p[24:]),
		Log:   u64(p[32:]),
	}
}

func decodeRegion(p []byte) RegionDesc {
	return RegionDesc{GuestPhysAddr: u64(p), Size: u64(p[8:]), UserAddr: u64(p[16:]), MmapOffset: u64(p[24:])}
}

// decodeMemTable parses a SET_MEM_TABLE payload; the region count must match
// the number of descriptors received.
func decodeMemTable(p []byte, nfds int) ([]RegionDesc, error) {
	if len(p) < sizeMemHeader {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE shorter than 8 bytes", ErrBadSize)
	}
	n := binary.NativeEndian.Uint32(p)
	if n == 0 || n > MaxFDs {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions (1-%d allowed)", ErrBadSize, n, MaxFDs)
	}
	// QEMU sends the full 8-slot array; DPDK sends the same. Accept either
	// the exact or the full size.
	if len(p) != sizeMemHeader+int(n)*sizeRegion && len(p) != sizeMemHeader+MaxFDs*sizeRegion {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE of %d bytes for %d regions", ErrBadSize, len(p), n)
	}
	if nfds != int(n) {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE has %d regions but %d fds", ErrBadFDCount, n, nfds)
	}
	regs := make([]RegionDesc, n)
	for i := range regs {
		regs[i] = decodeRegion(p[sizeMemHeader+i*sizeRegion:])
	}
	return regs, nil
}

func decodeConfig(p []byte) (ConfigPayload, error) {
	if len(p) < sizeConfigHdr {
		return ConfigPayload{}, fmt.Errorf("%w: config payload shorter than 12 bytes", ErrBadSize)
	}
	c := ConfigPayload{
		Offset: binary.NativeEndian.Uint32(p),
		Size:   binary.NativeEndian.Uint32(p[4:]),
		Flags:  binary.NativeEndian.Uint32(p[8:]),
	}
	if uint64(c.Size) != uint64(len(p)-sizeConfigHdr) {
		return c, fmt.Errorf("%w: config payload says %d bytes, carries %d", ErrBadSize, c.Size, len(p)-sizeConfigHdr)
	}
	c.Data = p[sizeConfigHdr:]
	return c, nil
}

func encodeConfig(c ConfigPayload) []byte {
	b := make([]byte, sizeConfigHdr+len(c.Data))
	binary.NativeEndian.PutUint32(b, c.Offset)
	binary.NativeEndian.PutUint32(b[4:], uint32(len(c.Data)))
	binary.NativeEndian.PutUint32(b[8:], c.Flags)
	copy(b[sizeConfigHdr:], c.Data)
	return b
}

// Payload encoders, shared by the back end's replies and the test front end.

// EncodeU64 returns an 8-byte payload.
func EncodeU64(v uint64) []byte {
	b := make([]byte, 8)
	binary.NativeEndian.PutUint64(b, v)
	return b
}

// EncodeVringState returns a vring state payload.
func EncodeVringState(s VringState) []byte {
	b := make([]byte, sizeVringState)
	binary.NativeEndian.PutUint32(b, s.Index)
	binary.NativeEndian.PutUint32(b[4:], s.Num)
	return b
}

// EncodeVringAddr returns a SET_VRING_ADDR payload.
func EncodeVringAddr(a VringAddr) []byte {
	b := make([]byte, sizeVringAddr)
	binary.NativeEndian.PutUint32(b, a.Index)
	binary.NativeEndian.PutUint32(b[4:], a.Flags)
	binary.NativeEndian.PutUint64(b[8:], a.Desc)
	binary.NativeEndian.PutUint64(b[16:], a.Used)
	binary.NativeEndian.PutUint64(b[24:], a.Avail)
	binary.NativeEndian.PutUint64(b[32:], a.Log)
	return b
}

func putRegion(b []byte, r RegionDesc) {
	binary.NativeEndian.PutUint64(b, r.GuestPhysAddr)
	binary.NativeEndian.PutUint64(b[8:], r.Size)
	binary.NativeEndian.PutUint64(b[16:], r.UserAddr)
	binary.NativeEndian.PutUint64(b[24:], r.MmapOffset)
}

// EncodeMemTable returns a SET_MEM_TABLE payload (full 8-slot array, as
// QEMU sends it).
func EncodeMemTable(regs []RegionDesc) []byte {
	b := make([]byte, sizeMemHeader+MaxFDs*sizeRegion)
	binary.NativeEndian.PutUint32(b, uint32(len(regs)))
	for i, r := range regs {
		putRegion(b[sizeMemHeader+i*sizeRegion:], r)
	}
	return b
}

// EncodeMemReg returns an ADD_MEM_REG/REM_MEM_REG payload.
func EncodeMemReg(r RegionDesc) []byte {
	b := make([]byte, sizeMemRegMsg)
	putRegion(b[8:], r)
	return b
}

// EncodeVringFile returns a SET_VRING_KICK/CALL/ERR payload.
func EncodeVringFile(index int, noFD bool) []byte {
	v := uint64(index) & vringIndexMask
	if noFD {
		v |= vringNoFD
	}
	return EncodeU64(v)
}

// EncodeConfig returns a GET_CONFIG/SET_CONFIG payload.
func EncodeConfig(offset, flags uint32, data []byte) []byte {
	return encodeConfig(ConfigPayload{Offset: offset, Flags: flags, Data: data})
}

// DecodeVringState parses a vring state payload (used by front ends to read
// GET_VRING_BASE replies).
func DecodeVringState(p []byte) (VringState, error) {
	if len(p) != sizeVringState {
		return VringState{}, fmt.Errorf("%w: vring state of %d bytes", ErrBadSize, len(p))
	}
	return decodeVringState(p), nil
}

// DecodeU64 parses a u64 payload.
func DecodeU64(p []byte) (uint64, error) {
	if len(p) != sizeU64 {
		return 0, fmt.Errorf("%w: u64 payload of %d bytes", ErrBadSize, len(p))
	}
	return u64(p), nil
}
