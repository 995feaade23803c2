package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zcnet/zcnet/internal/checksum"
)

// Frame sizes are counted as Ethernet standards and the 82599's size
// statistics count them: destination address through FCS. A 64-byte frame on
// the wire is delivered through an Endpoint as 60 bytes, since Endpoints see
// frames without FCS.
const (
	MinFrameSize = 64
	MaxFrameSize = 9018 // a 9000-byte MTU jumbo frame: 9000 + 14 header + 4 FCS
)

// broadcastMAC is where a Generator's broadcast frames go.
var broadcastMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// FlowField selects the header field a Generator varies to make its flows
// distinct, so that RSS hashes them to different queues.
type FlowField int

const (
	// VarySrcPort gives flow i UDP source port SrcPort+i.
	VarySrcPort FlowField = iota
	// VarySrcIP gives flow i IPv4 source address SrcIP+i.
	VarySrcIP
)

// GeneratorConfig describes the stream a Generator sends. Zero fields take
// the defaults documented on each.
type GeneratorConfig struct {
	SrcMAC MAC // default 02:00:00:00:00:01
	DstMAC MAC // default 02:00:00:00:00:02
	// DstMACs, if not empty, replaces DstMAC: unicast frames go to each
	// in turn, round-robin (the first frame to DstMACs[0]), so that one
	// generator feeds several receivers, say several guests on one NIC
	// port. Broadcast frames (BroadcastEvery) do not take a turn, so the
	// destinations' shares differ by at most one frame.
	DstMACs []MAC
	// BroadcastEvery, if positive, sends every BroadcastEvery-th frame
	// (the BroadcastEvery-th, the 2*BroadcastEvery-th, ...) to the
	// broadcast address ff:ff:ff:ff:ff:ff. Broadcast frames carry no
	// probe (the probe's bytes are zero, the checksums valid): a
	// receiver's echo of one does not belong to the verified stream, so
	// a Sink counts it as Foreign, and the probes' sequence numbers stay
	// contiguous over the unicast frames alone. 1 makes every frame a
	// broadcast.
	BroadcastEvery int
	// SrcIP and DstIP must be IPv4. Default 198.18.0.1 and 198.19.0.1, from
	// the range RFC 2544 sets aside for benchmarking (apart, so that varied
	// source addresses never reach the destination's).
	SrcIP, DstIP netip.Addr
	SrcPort      uint16 // default 49152
	DstPort      uint16 // default 9 (discard)

	// FrameSize is the frame length on the wire including the FCS, between
	// MinFrameSize and MaxFrameSize; default 64. Frames are delivered
	// FCSLen bytes shorter.
	FrameSize int
	// Flows is the number of flows, 1 to 65536, that frames cycle through
	// round-robin; default 1. Vary picks the field that tells them apart.
	Flows int
	Vary  FlowField

	// Rate is the frame rate in frames per second that Start paces to; 0
	// sends as fast as the receiving Endpoint accepts frames.
	Rate float64
	// Count stops a started generator after this many frames in total
	// (Emit counts too); 0 means no limit.
	Count uint64
	// Duration stops a started generator after this long; 0 means no limit.
	Duration time.Duration
	// Batch is the largest number of frames sent back to back between two
	// looks at the clock and the stop flag; default 32.
	Batch int

	// Now stamps probes (and paces Start); default Monotonic. A sink
	// measuring latency must use the same clock.
	Now func() int64
}

// Generator sends a stream of Ethernet/IPv4/UDP frames with valid checksums,
// each carrying a probe (sequence number and transmit timestamp), into an
// Endpoint. It builds every frame in one reused buffer and so allocates
// nothing per frame; that is sound because Endpoints must not retain frames.
type Generator struct {
	cfg  GeneratorConfig
	peer Endpoint

	// mu serialises frame building: Emit and the started goroutine share
	// buf and the sequence counter.
	mu       sync.Mutex
	buf      []byte
	seq      uint64
	flow     int
	baseIP   uint32 // SrcIP as a number, for VarySrcIP
	ipSum    uint64 // IPv4 header sum with the varied field zero
	udpSum   uint64 // pseudo-header + UDP header + filler, varied field zero
	probeOff int
	// Several destinations or broadcasts: the destination of the next
	// unicast frame, the frames until the next broadcast, and the frames
	// each destination was sent (all under mu).
	dests     []MAC
	dst       int
	toBcast   int
	sentTo    []uint64
	multiDest bool

	sent, bcast atomic.Uint64

	runMu   sync.Mutex
	running bool
	stop    chan struct{}
	done    chan struct{}
}

// NewGenerator checks cfg, fills in its defaults and prepares the frame
// template. Frames go to peer.
func NewGenerator(cfg GeneratorConfig, peer Endpoint) (*Generator, error) {
	if peer == nil {
		return nil, errors.New("wire: generator needs an Endpoint to send into")
	}
	if cfg.SrcMAC == (MAC{}) {
		cfg.SrcMAC = MAC{0x02, 0, 0, 0, 0, 0x01}
	}
	if cfg.DstMAC == (MAC{}) {
		cfg.DstMAC = MAC{0x02, 0, 0, 0, 0, 0x02}
	}
	if !cfg.SrcIP.IsValid() {
		cfg.SrcIP = netip.AddrFrom4([4]byte{198, 18, 0, 1})
	}
	if !cfg.DstIP.IsValid() {
		cfg.DstIP = netip.AddrFrom4([4]byte{198, 19, 0, 1})
	}
	if cfg.SrcPort == 0 {
		cfg.SrcPort = 49152
	}
	if cfg.DstPort == 0 {
		cfg.DstPort = 9
	}
	if cfg.FrameSize == 0 {
		cfg.FrameSize = MinFrameSize
	}
	if cfg.Flows == 0 {
		cfg.Flows = 1
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 32
	}
	if cfg.Now == nil {
		cfg.Now = Monotonic
	}
	if cfg.FrameSize < MinFrameSize || cfg.FrameSize > MaxFrameSize {
		return nil, fmt.Errorf("wire: generator frame size %d is outside %d..%d (bytes on the wire, FCS included)",
			cfg.FrameSize, MinFrameSize, MaxFrameSize)
	}
	if cfg.Flows < 1 || cfg.Flows > 65536 {
		return nil, fmt.Errorf("wire: generator flow count %d is outside 1..65536", cfg.Flows)
	}
	if cfg.Vary != VarySrcPort && cfg.Vary != VarySrcIP {
		return nil, fmt.Errorf("wire: unknown generator FlowField %d", cfg.Vary)
	}
	if cfg.Rate < 0 {
		return nil, fmt.Errorf("wire: generator rate %v pps is negative", cfg.Rate)
	}
	if cfg.BroadcastEvery < 0 {
		return nil, fmt.Errorf("wire: generator BroadcastEvery %d is negative", cfg.BroadcastEvery)
	}
	for i, m := range cfg.DstMACs {
		if m == (MAC{}) || m[0]&1 != 0 {
			return nil, fmt.Errorf("wire: generator destination %d (%s) is not a unicast address", i, m)
		}
	}
	cfg.DstMACs = append([]MAC(nil), cfg.DstMACs...)
	if len(cfg.DstMACs) > 0 {
		cfg.DstMAC = cfg.DstMACs[0]
	}
	src, err := ipv4Bytes(cfg.SrcIP, "generator source")
	if err != nil {
		return nil, fmt.Errorf("wire: %w", err)
	}
	dst, err := ipv4Bytes(cfg.DstIP, "generator destination")
	if err != nil {
		return nil, fmt.Errorf("wire: %w", err)
	}

	g := &Generator{cfg: cfg, peer: peer, buf: make([]byte, cfg.FrameSize-FCSLen)}
	g.multiDest = len(cfg.DstMACs) > 1 || cfg.BroadcastEvery > 0
	g.toBcast = cfg.BroadcastEvery
	g.dests = cfg.DstMACs
	if len(g.dests) == 0 {
		g.dests = []MAC{cfg.DstMAC}
	}
	g.sentTo = make([]uint64, len(g.dests))
	g.baseIP = binary.BigEndian.Uint32(src[:])
	hdr := UDP4Header{DstMAC: cfg.DstMAC, SrcMAC: cfg.SrcMAC, SrcIP: src, DstIP: dst, SrcPort: cfg.SrcPort, DstPort: cfg.DstPort}
	if cfg.Vary == VarySrcIP {
		hdr.SrcIP = [4]byte{}
	} else {
		hdr.SrcPort = 0
	}
	putUDP4Headers(g.buf, hdr)
	g.probeOff = UDP4FrameLen(0)
	// Filler after the probe: a pattern rather than zeros, so that a model
	// that mangles payload bytes breaks the UDP checksum.
	for i := g.probeOff + ProbeLen; i < len(g.buf); i++ {
		g.buf[i] = byte(i)
	}
	ip := g.buf[EthernetHeaderLen:g.probeOff]
	udp := g.buf[EthernetHeaderLen+IPv4HeaderLen:]
	g.ipSum = checksum.Add(0, ip[:IPv4HeaderLen])
	g.udpSum = checksum.PseudoIPv4(hdr.SrcIP, dst, IPProtoUDP, len(udp)) +
		checksum.Add(0, udp[:UDPHeaderLen]) + checksum.Add(0, udp[UDPHeaderLen+ProbeLen:])
	return g, nil
}

// FrameLen is the length of the frames handed to the peer (FrameSize less
// the FCS).
func (g *Generator) FrameLen() int { return len(g.buf) }

// Sent is the number of frames delivered so far, broadcast ones
// included.
func (g *Generator) Sent() uint64 { return g.sent.Load() }

// Broadcasts is the number of broadcast frames delivered so far (see
// GeneratorConfig.BroadcastEvery); Sent less Broadcasts is what carried a
// probe.
func (g *Generator) Broadcasts() uint64 { return g.bcast.Load() }

// Probes is the number of frames delivered so far that carried a probe:
// Sent less Broadcasts, what a Sink verifying the stream should receive.
func (g *Generator) Probes() uint64 {
	b := g.bcast.Load()
	return g.sent.Load() - b
}

// SentTo returns how many unicast frames went to each destination so far:
// to DstMACs[i] at index i, or to DstMAC at index 0 without DstMACs.
func (g *Generator) SentTo() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.multiDest {
		return []uint64{g.sent.Load()}
	}
	return append([]uint64(nil), g.sentTo...)
}

// Emit builds and delivers n frames at once, ignoring Rate, Count and
// Duration: the deterministic way for tests to drive a generator. It may be
// called while the generator is started; frames are then interleaved.
func (g *Generator) Emit(n int) {
	g.mu.Lock()
	g.emitLocked(n)
	g.mu.Unlock()
}

func (g *Generator) emitLocked(n int) {
	b := g.buf
	ip := b[EthernetHeaderLen:]
	udp := ip[IPv4HeaderLen:]
	probe := b[g.probeOff : g.probeOff+ProbeLen]
	var bcasts uint64
	for range n {
		bcast := false
		if g.multiDest {
			if g.toBcast > 0 {
				if g.toBcast--; g.toBcast == 0 {
					g.toBcast, bcast = g.cfg.BroadcastEvery, true
				}
			}
			if bcast {
				copy(b[0:6], broadcastMAC[:])
				bcasts++
			} else {
				copy(b[0:6], g.dests[g.dst][:])
				g.sentTo[g.dst]++
				if g.dst++; g.dst == len(g.dests) {
					g.dst = 0
				}
			}
		}
		ipSum, udpSum := g.ipSum, g.udpSum
		if g.cfg.Vary == VarySrcIP {
			srcIP := g.baseIP + uint32(g.flow)
			binary.BigEndian.PutUint32(ip[12:], srcIP)
			ipSum += uint64(srcIP)  // in the header
			udpSum += uint64(srcIP) // and in the pseudo-header
		} else {
			port := g.cfg.SrcPort + uint16(g.flow)
			binary.BigEndian.PutUint16(udp[0:], port)
			udpSum += uint64(port)
		}
		binary.BigEndian.PutUint16(ip[10:], checksum.Finish(ipSum))
		if bcast {
			clear(probe)
		} else {
			putProbe(probe, g.seq, g.cfg.Now())
			g.seq = (g.seq + 1) & probeSeqMask
		}
		binary.BigEndian.PutUint16(udp[6:], udpChecksumField(checksum.Add(udpSum, probe)))

		if g.flow++; g.flow == g.cfg.Flows {
			g.flow = 0
		}
		g.peer.Deliver(b)
	}
	// Sent first: Probes reads Broadcasts first and so never sees more
	// broadcasts than frames.
	g.sent.Add(uint64(n))
	g.bcast.Add(bcasts)
}

// Start sends frames from a new goroutine, paced to Rate, until Stop, Count
// or Duration ends it. Pacing is by credit: the goroutine sleeps, then sends
// as many frames as the elapsed time allows in batches of at most Batch, so
// high rates cost a few clock reads per batch, not a sleep per frame.
func (g *Generator) Start() error {
	g.runMu.Lock()
	defer g.runMu.Unlock()
	if g.running {
		return errors.New("wire: generator already started")
	}
	g.running = true
	g.stop = make(chan struct{})
	g.done = make(chan struct{})
	go g.run(g.stop, g.done)
	return nil
}

// Stop ends a started generator and waits for its goroutine to return. It
// does nothing if the generator is not running.
func (g *Generator) Stop() {
	g.runMu.Lock()
	defer g.runMu.Unlock()
	if !g.running {
		return
	}
	close(g.stop)
	<-g.done
	g.running = false
}

// Done returns a channel closed when the started generator finishes by
// itself (Count or Duration) or is stopped; nil before the first Start.
func (g *Generator) Done() <-chan struct{} {
	g.runMu.Lock()
	defer g.runMu.Unlock()
	return g.done
}

// minPacingSleep is the shortest pause the paced loop aims for. Shorter
// sleeps are not honoured precisely by the Go scheduler anyway; sending the
// frames that came due during the pause in one burst keeps the average rate.
const minPacingSleep = 100 * time.Microsecond

// maxPacingDebt is how far behind schedule the paced loop may fall (a
// descheduled goroutine, a slow receiver) and still catch up; frames owed
// beyond it are forgiven, so the burst after a long stall stays bounded.
const maxPacingDebt = 10 * time.Millisecond

func (g *Generator) run(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	cfg := &g.cfg
	start := cfg.Now()
	var deadline int64
	if cfg.Duration > 0 {
		deadline = start + int64(cfg.Duration)
	}
	batch := cfg.Batch
	// Pacing state: frames owed (credit) and the largest debt carried over
	// a stall, so a long pause does not turn into an unbounded burst.
	var credit, maxCredit, wantCredit float64
	if cfg.Rate > 0 {
		maxCredit = max(float64(batch), cfg.Rate*float64(maxPacingDebt)/float64(time.Second))
		wantCredit = min(float64(batch), max(1, cfg.Rate*float64(minPacingSleep)/float64(time.Second)))
	}
	last := start
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-stop:
			return
		default:
		}
		now := cfg.Now()
		if deadline != 0 && now >= deadline {
			return
		}
		n := batch
		if cfg.Count > 0 {
			sent := g.sent.Load()
			if sent >= cfg.Count {
				return
			}
			n = int(min(uint64(n), cfg.Count-sent))
		}
		if cfg.Rate > 0 {
			credit = min(maxCredit, credit+float64(now-last)*cfg.Rate/float64(time.Second))
			last = now
			if credit < 1 {
				wait := time.Duration((wantCredit - credit) / cfg.Rate * float64(time.Second))
				timer.Reset(wait)
				select {
				case <-stop:
					return
				case <-timer.C:
				}
				continue
			}
			n = min(n, int(credit))
			credit -= float64(n)
		}
		g.Emit(n)
	}
}
