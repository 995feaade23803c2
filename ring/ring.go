// Package ring is the contract between a NIC queue and whoever owns the
// memory it moves packets through. A NIC queue never allocates or owns
// buffers: it is handed external buffers, identified by the I/O virtual
// address the device sees and an opaque cookie the owner uses to find the
// buffer again, and it hands the cookies back when the device is done.
//
// Host buffer pools and guest virtio buffers are both just suppliers of Bufs,
// which is what lets the zero-copy engine post a guest's own receive buffers
// to the NIC.
//
// The package sits below both the NIC drivers (ixgbe/) and their users (the
// zero-copy engine in engine/, the forwarder in fwd/), so neither side
// imports the other: a user reaches a NIC only through RxQueue, TxQueue and
// QueuePair, and the composition (appliance/) is the one place that names
// the NIC model. DESIGN.md places the contract in driver/; that package is
// now split by job and none of its parts could hold the contract without
// the NIC drivers importing it.
package ring

// Cookie identifies a buffer or packet to its owner. The queue stores it and
// returns it unchanged; it never interprets it.
type Cookie uint64

// Buf is a receive buffer: Len bytes of device-writable memory at IOVA.
type Buf struct {
	IOVA   uint64
	Len    uint32
	Cookie Cookie
}

// Checksum verdicts the NIC reports for a received frame.
type CsumStatus uint8

const (
	// CsumUnknown: the NIC did not check (not IP, offload off, or unparsed).
	CsumUnknown CsumStatus = iota
	// CsumGood: checked and correct.
	CsumGood
	// CsumBad: checked and wrong.
	CsumBad
)

// RxDone is a completed receive buffer. A frame longer than one buffer
// completes as several RxDones in ring order, RxFlagEOP set only on the
// last; the frame-level results (checksum verdicts, VLAN) are valid on the
// EOP entry.
//
// It carries what the queue's users act on, packed so that a driver fills
// it with four stores per frame: the frame-level results are bits of
// Flags, read through the methods below. (The NIC's RSS hash and packet
// type were decoded into it for every frame, and nothing read them.)
type RxDone struct {
	Cookie Cookie
	// Len is the number of bytes written into this buffer.
	Len   uint32
	Flags RxFlags
	// VLAN is the stripped 802.1Q TCI when VLANStripped reports true.
	VLAN uint16
}

// RxFlags are the bits of RxDone.Flags.
type RxFlags uint16

const (
	// RxFlagEOP marks the last buffer of a frame.
	RxFlagEOP RxFlags = 1 << iota
	// RxFlagError: the NIC flagged the frame as damaged (e.g. a length or
	// CRC error); such frames should be dropped and counted.
	RxFlagError
	// RxFlagVLANStripped: the NIC removed the frame's 802.1Q tag, whose
	// TCI is in RxDone.VLAN.
	RxFlagVLANStripped
)

// The checksum verdicts are CsumStatus values in two bits each of
// RxFlags, above the flags.
const (
	RxIPCsumShift = 3
	RxL4CsumShift = 5
)

// RxVerdicts returns the Flags bits that say the NIC found the IP header
// checksum ip and the TCP/UDP checksum l4.
func RxVerdicts(ip, l4 CsumStatus) RxFlags {
	return RxFlags(ip)<<RxIPCsumShift | RxFlags(l4)<<RxL4CsumShift
}

// EOP reports whether d is the last buffer of its frame.
func (d *RxDone) EOP() bool { return d.Flags&RxFlagEOP != 0 }

// RxError reports whether the NIC flagged d's frame as damaged.
func (d *RxDone) RxError() bool { return d.Flags&RxFlagError != 0 }

// VLANStripped reports whether the NIC removed the frame's VLAN tag.
func (d *RxDone) VLANStripped() bool { return d.Flags&RxFlagVLANStripped != 0 }

// IPCsum is the NIC's verdict on the frame's IPv4 header checksum.
func (d *RxDone) IPCsum() CsumStatus { return CsumStatus(d.Flags>>RxIPCsumShift) & 3 }

// L4Csum is the NIC's verdict on the frame's TCP or UDP checksum.
func (d *RxDone) L4Csum() CsumStatus { return CsumStatus(d.Flags>>RxL4CsumShift) & 3 }

// Segment is one piece of a packet to transmit.
type Segment struct {
	IOVA uint64
	Len  uint32
}

// Offload requests for a transmitted packet.
type Offload uint8

const (
	// OffloadIPv4Csum asks the NIC to fill in the IPv4 header checksum.
	OffloadIPv4Csum Offload = 1 << iota
	// OffloadL4Csum asks for the TCP or UDP checksum (L4Proto says which).
	OffloadL4Csum
	// OffloadTSO asks the NIC to segment a TCP packet into MSS-sized frames.
	OffloadTSO
	// OffloadVLAN asks the NIC to insert VLAN as an 802.1Q tag.
	OffloadVLAN
)

// L4 protocols for checksum offload.
const (
	L4None uint8 = 0
	L4TCP  uint8 = 6
	L4UDP  uint8 = 17
	L4SCTP uint8 = 132
)

// TxPkt is a packet to transmit: its segments in order and what the NIC
// should compute on the way out. Header lengths are needed for checksum and
// TSO offloads, which the NIC cannot parse on its own.
type TxPkt struct {
	Segs    []Segment
	Cookie  Cookie
	Offload Offload
	// IPv6 is true for an IPv6 packet, false for IPv4.
	IPv6    bool
	L4Proto uint8
	L2Len   uint8  // Ethernet header length, including any VLAN tag in the data
	L3Len   uint16 // IP header length, options included
	L4Len   uint8  // TCP header length (TSO only)
	MSS     uint16 // TSO segment payload size
	VLAN    uint16 // tag to insert with OffloadVLAN
}

// RxQueue is a NIC receive queue.
type RxQueue interface {
	// Post hands bufs to the device, in order, and returns how many it
	// took (fewer when the ring is full). One doorbell write per call.
	Post(bufs []Buf) int
	// Harvest fills done with completed buffers in ring order and returns
	// how many.
	Harvest(done []RxDone) int
}

// TxQueue is a NIC transmit queue.
type TxQueue interface {
	// Submit queues packets, in order, and returns how many it took (fewer
	// when the ring lacks descriptors for the next one). One doorbell write
	// per call.
	Submit(pkts []TxPkt) int
	// Reclaim fills done with the cookies of packets the device has
	// finished sending and returns how many.
	Reclaim(done []Cookie) int
}

// QueuePair is one receive and one transmit queue of a NIC with their
// lifecycle: whoever owns the pair can stop it, take its buffers back and
// start it again while the rest of the NIC keeps running. A NIC driver
// returns it; its user never names the NIC model.
type QueuePair interface {
	Rx() RxQueue
	Tx() TxQueue
	// RxCapacity is how many buffers the RX queue holds at once; TxFree is
	// how many TX descriptors are free now.
	RxCapacity() int
	TxFree() int
	// StopRx/StopTx return once the device no longer touches the buffers
	// posted to that queue; DrainRx/DrainTx then hand their cookies back.
	// In between, Rx().Harvest still returns the frames the device wrote
	// and Tx().Reclaim the packets it sent before it stopped, so that the
	// drains return only empty buffers and packets never sent.
	StopRx() error
	DrainRx(dst []Cookie) ([]Cookie, error)
	StopTx() error
	DrainTx(dst []Cookie) ([]Cookie, error)
	// RxMaxWrite is the most bytes the NIC writes for one received frame:
	// a buffer at least that long is never written past, whatever the
	// queue's buffer size.
	RxMaxWrite() int
	// StartRx starts the stopped, drained RX queue empty with buffers of
	// bufSize bytes (a multiple of 1024); StartTx likewise. The queue then
	// takes buffers of min(bufSize, RxMaxWrite()) bytes or more.
	StartRx(bufSize int) error
	StartTx() error
}
