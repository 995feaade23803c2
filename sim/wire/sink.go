package wire

import (
	"math/bits"
	"sync"
	"time"
)

// SinkStats is a snapshot of what a Sink has seen.
type SinkStats struct {
	Frames uint64 // every frame delivered, whatever it was
	Bytes  uint64 // their length, without FCS

	// Received counts probes that passed both checksums; ReceivedBytes
	// their frame lengths without FCS.
	Received      uint64
	ReceivedBytes uint64

	// Foreign frames are well formed but no probe: another protocol, a
	// fragment, or a UDP payload without the probe magic.
	Foreign uint64
	// Malformed frames are cut short or have inconsistent header lengths.
	Malformed uint64
	// BadIPChecksum and BadUDPChecksum are counted independently: a frame
	// with both wrong counts in both. Either keeps the frame out of the
	// sequence accounting, so its sequence number then shows as lost.
	BadIPChecksum  uint64
	BadUDPChecksum uint64
	// NoUDPChecksum counts probes sent with the UDP checksum field 0 ("not
	// computed", legal in IPv4); they are accepted.
	NoUDPChecksum uint64

	// NextSeq is one past the highest sequence number received.
	NextSeq uint64
	// Lost counts sequence numbers below NextSeq not received (yet).
	Lost uint64
	// OutOfOrder counts probes that arrived after a higher sequence number
	// and filled a gap; each took one back off Lost.
	OutOfOrder uint64
	// Duplicates counts probes whose sequence number was already received.
	Duplicates uint64
	// Late counts probes older than the reordering window (SinkWindow
	// sequence numbers below NextSeq): whether they are reordered or
	// duplicated cannot be told any more, and Lost is left as it was.
	Late uint64

	Latency LatencyStats
}

// LatencyStats summarises probe latency: receive time minus the probe's
// transmit stamp. Percentiles come from a log-linear histogram and are
// accurate to within 1/16 (6.25%) of the value.
type LatencyStats struct {
	Samples             uint64
	Min, Mean, Max      time.Duration
	P50, P90, P99, P999 time.Duration
}

// SinkWindow is how many sequence numbers below the highest one seen the
// sink remembers, to tell a reordered probe from a duplicate.
const SinkWindow = 1 << 16

// Sink is an Endpoint that verifies and counts the probes a Generator sent:
// checksums, sequence gaps, reordering, duplicates and latency. It expects
// one generator's stream, starting at sequence number 0. Deliver and Stats
// may be called from any goroutines.
type Sink struct {
	now func() int64

	mu    sync.Mutex
	st    SinkStats
	seen  [SinkWindow / 64]uint64 // bit seq%SinkWindow: seq received, for seq in the window
	latNs struct {
		sum, min, max uint64
	}
	hist [histBuckets]uint64
}

// NewSink makes a sink that measures latency against now, which must be the
// generator's clock; nil means Monotonic.
func NewSink(now func() int64) *Sink {
	if now == nil {
		now = Monotonic
	}
	return &Sink{now: now}
}

// Deliver implements Endpoint. It allocates nothing.
func (s *Sink) Deliver(frame []byte) {
	p, err := ParseUDP4(frame)
	var seq uint64
	var stamp int64
	probe := false
	if err == nil {
		seq, stamp, probe = parseProbe(p.Payload)
	}
	var rx int64
	if probe && p.IPChecksumOK && p.UDPChecksumOK {
		rx = s.now()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	st.Frames++
	st.Bytes += uint64(len(frame))
	switch err {
	case nil:
	case ErrTruncated, ErrBadIPv4, ErrBadUDPSize:
		st.Malformed++
		return
	default: // not IPv4, not UDP, a fragment
		st.Foreign++
		return
	}
	if !probe {
		st.Foreign++
		return
	}
	if !p.IPChecksumOK {
		st.BadIPChecksum++
	}
	if !p.UDPChecksumOK {
		st.BadUDPChecksum++
	}
	if !p.IPChecksumOK || !p.UDPChecksumOK {
		return
	}
	if !p.UDPChecksumPresent {
		st.NoUDPChecksum++
	}
	st.Received++
	st.ReceivedBytes += uint64(len(frame))
	s.account(seq)
	s.latency(rx - stamp)
}

// account updates the sequence counters for one received probe.
func (s *Sink) account(seq uint64) {
	st := &s.st
	switch {
	case seq >= st.NextSeq:
		// New highest: the numbers skipped over are lost until they turn
		// up, and the window slides over them.
		gap := seq - st.NextSeq
		st.Lost += gap
		if gap >= SinkWindow {
			s.seen = [SinkWindow / 64]uint64{}
		} else {
			for q := st.NextSeq; q < seq; q++ {
				s.seen[(q%SinkWindow)/64] &^= 1 << (q % 64)
			}
		}
		s.seen[(seq%SinkWindow)/64] |= 1 << (seq % 64)
		st.NextSeq = seq + 1
	case st.NextSeq-seq > SinkWindow:
		st.Late++
	default:
		word, bit := &s.seen[(seq%SinkWindow)/64], uint64(1)<<(seq%64)
		if *word&bit != 0 {
			st.Duplicates++
			return
		}
		*word |= bit
		st.OutOfOrder++
		st.Lost--
	}
}

func (s *Sink) latency(ns int64) {
	if ns < 0 { // a stamp from another clock; count it as zero
		ns = 0
	}
	v := uint64(ns)
	st := &s.st.Latency
	if st.Samples == 0 || v < s.latNs.min {
		s.latNs.min = v
	}
	if v > s.latNs.max {
		s.latNs.max = v
	}
	s.latNs.sum += v
	st.Samples++
	s.hist[histBucket(v)]++
}

// Reset forgets everything: counters, latency and sequence state, as if
// the sink were new, ready for a new generator's stream.
func (s *Sink) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = SinkStats{}
	s.seen = [SinkWindow / 64]uint64{}
	s.latNs.sum, s.latNs.min, s.latNs.max = 0, 0, 0
	s.hist = [histBuckets]uint64{}
}

// Stats returns a consistent snapshot of the counters.
func (s *Sink) Stats() SinkStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if n := st.Latency.Samples; n > 0 {
		l := &st.Latency
		l.Min = time.Duration(s.latNs.min)
		l.Max = time.Duration(s.latNs.max)
		l.Mean = time.Duration(s.latNs.sum / n)
		l.P50 = s.percentile(0.50)
		l.P90 = s.percentile(0.90)
		l.P99 = s.percentile(0.99)
		l.P999 = s.percentile(0.999)
	}
	return st
}

// The latency histogram is log-linear: values below 16 ns get a bucket
// each; above, every power of two is split into 16 equal buckets, so a
// bucket is never wider than 1/16 of its lower bound.
const (
	histSubBits = 4
	histSub     = 1 << histSubBits
	histBuckets = histSub + (64-histSubBits)*histSub
)

func histBucket(v uint64) int {
	if v < histSub {
		return int(v)
	}
	e := bits.Len64(v) // v is in [2^(e-1), 2^e), e > histSubBits
	shift := e - 1 - histSubBits
	sub := int(v>>shift) - histSub // the histSubBits bits below the leading one
	return histSub + (e-1-histSubBits)*histSub + sub
}

// histBounds returns the smallest and largest value of bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < histSub {
		return uint64(i), uint64(i)
	}
	shift := (i - histSub) / histSub
	sub := uint64((i-histSub)%histSub) + histSub
	lo = sub << shift
	return lo, lo + (1 << shift) - 1
}

// percentile returns the midpoint of the bucket holding quantile q, clamped
// to the observed extremes.
func (s *Sink) percentile(q float64) time.Duration {
	n := s.st.Latency.Samples
	rank := uint64(q*float64(n-1)) + 1 // 1-based rank of the sample wanted
	var acc uint64
	for i, c := range s.hist {
		acc += c
		if acc >= rank {
			lo, hi := histBounds(i)
			mid := lo + (hi-lo)/2
			return time.Duration(min(max(mid, s.latNs.min), s.latNs.max))
		}
	}
	return time.Duration(s.latNs.max)
}
