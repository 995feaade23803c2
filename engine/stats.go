package engine

// counter indexes a Channel's statistics.
type counter int

const (
	cRxPackets counter = iota
	cRxBytes
	cTxPackets
	cTxBytes
	cRxZeroCopy
	cTxZeroCopy
	cRxCopied
	cTxCopied
	cRxSpanMoves
	cCopyForced
	cCopyFeatures
	cCopySmallBuffer
	cCopyLayout
	cCopyNoGuestBuffer
	cDropRxError
	cDropRxNoGuestBuffer
	cDropRxTooBig
	cDropRxChainUnusable
	cDropRxQuiesce
	cDropTxBadHeader
	cDropTxOffload
	cDropTxNoCopyBuffer
	cDropTxQuiesce
	cGuestErrors
	cMACFilterErrors
	cBusyPolls
	cIdlePolls
	cRestarts
	cRxRewound
	cTxSignals
	cGuestMemoryFaults
	cRxHarvested
	cTxRARP
	numCounters
)

// Stats are a Channel's totals since it was created.
type Stats struct {
	RxPackets, RxBytes uint64 // wire -> guest, delivered
	TxPackets, TxBytes uint64 // guest -> wire, handed to the NIC

	// RxHarvested counts the frames the channel took from its NIC receive
	// queue: what the NIC counts as received into that queue (QPRC), less
	// what it still holds. Each of them is delivered (RxPackets), dropped
	// under a frame cause (Drops.RxFrames) or waiting in host buffers for
	// the guest (RxPending):
	//
	//	RxHarvested == RxPackets + Drops.RxFrames() + RxPending
	//
	// holds in every Stats value.
	RxHarvested uint64
	// RxPending is how many harvested frames are waiting to be delivered
	// at this moment (a gauge, not a total): frames in host buffers while
	// the guest has posted no buffer for them.
	RxPending uint64

	// Frames that moved without a copy (the NIC wrote into or read from
	// guest memory) and frames copied through host buffers.
	RxZeroCopy, TxZeroCopy uint64
	RxCopied, TxCopied     uint64
	// RxSpanMoves counts buffers after the first of a frame spanning
	// several guest buffers, whose data was moved down over the space left
	// for the virtio-net header (which only the first buffer carries).
	RxSpanMoves uint64

	// Copies by reason (each copied frame counts once, in one reason).
	Copy CopyReasons

	Drops Drops

	// GuestErrors counts broken guest chains (the virtqueue is marked
	// NEEDS_RESET by vhost).
	GuestErrors uint64
	// MACFilterErrors counts guest MACs learned from its frames that the
	// NIC's filter refused (e.g. its address table is full).
	MACFilterErrors uint64
	// BusyPolls and IdlePolls count Poll calls that did / did not move
	// anything.
	BusyPolls, IdlePolls uint64
	// Restarts counts how often the channel stopped its NIC queues and took
	// guest buffers back (reconnect, ring stop, new memory table).
	Restarts uint64
	// RxRewound counts guest RX chains given back unwritten by rewinding
	// the ring (no used entry), when the channel stopped.
	RxRewound uint64
	// TxSignals counts TX completion flushes (used-ring publications that
	// may signal the guest), coalesced every TxCompleteBatch completions.
	TxSignals uint64
	// GuestMemoryFaults counts accesses to guest memory that faulted
	// because the front end took the memory away (truncated its file):
	// each stopped the channel's NIC queues and dropped the guest's session.
	GuestMemoryFaults uint64
	// TxRARP counts the RARPs sent from the guest's MAC on the front end's
	// request (vhost SEND_RARP, after a live migration), not in TxPackets.
	TxRARP uint64
}

// CopyReasons says why frames were copied instead of moved zero-copy.
type CopyReasons struct {
	Forced        uint64 // Config.ForceCopy
	Features      uint64 // the guest negotiated something zero-copy cannot honour (ACCESS_PLATFORM; no MRG_RXBUF with small buffers)
	SmallBuffer   uint64 // guest RX buffers smaller than the smallest NIC buffer (1 KiB + header)
	Layout        uint64 // chain layout unusable (header and data not in one writable piece; too many TX segments)
	NoGuestBuffer uint64 // frames that arrived while the guest had posted no buffer, held in host buffers
}

// Drops are frames lost, by cause; RxChainUnusable alone counts guest
// buffers, not frames.
type Drops struct {
	RxError         uint64 // the NIC flagged the frame damaged
	RxNoGuestBuffer uint64 // copy path: no host buffer was left to hold a frame for the guest
	RxTooBig        uint64 // frame larger than what the guest's buffers can take
	RxChainUnusable uint64 // guest RX chains that could not be used, returned empty (buffers: no frame is lost)
	RxQuiesce       uint64 // frames the NIC had written, not yet delivered, when the channel stopped
	TxBadHeader     uint64 // virtio-net header or frame headers malformed
	TxOffload       uint64 // offload request the NIC cannot do (UDP fragmentation offload, unknown checksum position)
	TxNoCopyBuffer  uint64 // copy path: host buffers exhausted
	TxQuiesce       uint64 // packets not sent when the channel stopped
}

// RxFrames sums the receive drops that lose a frame (every cause but
// RxChainUnusable, which counts empty guest buffers).
func (d Drops) RxFrames() uint64 {
	return d.RxError + d.RxNoGuestBuffer + d.RxTooBig + d.RxQuiesce
}

// TxFrames sums the transmit drops.
func (d Drops) TxFrames() uint64 {
	return d.TxBadHeader + d.TxOffload + d.TxNoCopyBuffer + d.TxQuiesce
}

// stats is the live counter set. Its counters are plain fields written
// with the data-path lock held (the poller's rounds and the control
// paths that stop queues) and read under the same lock (Channel.Stats),
// so a snapshot is one moment's counters together and sums across
// counters (see Stats.RxHarvested) hold in every snapshot. Publishing
// them through atomics instead took a locked instruction per changed
// counter and two for a sequence number on every busy poll: about 50 ns
// a round, 1.5 ns of each frame's 25-32 in the engine benchmarks.
type stats struct {
	c [numCounters]uint64
}

func (s *stats) add(c counter, n uint64) { s.c[c] += n }

// read returns the totals; pending is the number of frames waiting for
// delivery now (Stats.RxPending).
func (s *stats) read(pending int) Stats {
	g := func(c counter) uint64 { return s.c[c] }
	return Stats{
		RxPackets: g(cRxPackets), RxBytes: g(cRxBytes), TxPackets: g(cTxPackets), TxBytes: g(cTxBytes),
		RxHarvested: g(cRxHarvested), RxPending: uint64(pending),
		RxZeroCopy: g(cRxZeroCopy), TxZeroCopy: g(cTxZeroCopy), RxCopied: g(cRxCopied), TxCopied: g(cTxCopied),
		RxSpanMoves: g(cRxSpanMoves),
		Copy: CopyReasons{Forced: g(cCopyForced), Features: g(cCopyFeatures), SmallBuffer: g(cCopySmallBuffer),
			Layout: g(cCopyLayout), NoGuestBuffer: g(cCopyNoGuestBuffer)},
		Drops: Drops{RxError: g(cDropRxError), RxNoGuestBuffer: g(cDropRxNoGuestBuffer), RxTooBig: g(cDropRxTooBig),
			RxChainUnusable: g(cDropRxChainUnusable), RxQuiesce: g(cDropRxQuiesce), TxBadHeader: g(cDropTxBadHeader),
			TxOffload: g(cDropTxOffload), TxNoCopyBuffer: g(cDropTxNoCopyBuffer), TxQuiesce: g(cDropTxQuiesce)},
		GuestErrors: g(cGuestErrors), MACFilterErrors: g(cMACFilterErrors), BusyPolls: g(cBusyPolls), IdlePolls: g(cIdlePolls),
		Restarts: g(cRestarts), RxRewound: g(cRxRewound), TxSignals: g(cTxSignals), GuestMemoryFaults: g(cGuestMemoryFaults),
		TxRARP: g(cTxRARP),
	}
}
