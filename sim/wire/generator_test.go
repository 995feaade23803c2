package wire

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// capture is an Endpoint that keeps a copy of every frame.
type capture struct {
	mu     sync.Mutex
	frames [][]byte
}

func (c *capture) Deliver(f []byte) {
	c.mu.Lock()
	c.frames = append(c.frames, append([]byte(nil), f...))
	c.mu.Unlock()
}

func (c *capture) all() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames
}

func newGenerator(t testing.TB, cfg GeneratorConfig, peer Endpoint) *Generator {
	t.Helper()
	g, err := NewGenerator(cfg, peer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)
	return g
}

func TestGeneratorToSinkLossFree(t *testing.T) {
	for _, size := range []int{MinFrameSize, 65, 128, 1518, MaxFrameSize} {
		for _, vary := range []FlowField{VarySrcPort, VarySrcIP} {
			sink := NewSink(nil)
			g := newGenerator(t, GeneratorConfig{FrameSize: size, Flows: 7, Vary: vary}, sink)
			if g.FrameLen() != size-FCSLen {
				t.Fatalf("size %d: FrameLen %d, want %d", size, g.FrameLen(), size-FCSLen)
			}
			const n = 1000
			g.Emit(300)
			g.Emit(n - 300)
			st := sink.Stats()
			want := SinkStats{Frames: n, Bytes: n * uint64(size-FCSLen), Received: n, ReceivedBytes: n * uint64(size-FCSLen), NextSeq: n}
			want.Latency = st.Latency
			if st != want {
				t.Errorf("size %d vary %d: stats %+v\nwant %+v", size, vary, st, want)
			}
			if st.Latency.Samples != n || st.Latency.Min > st.Latency.Mean || st.Latency.Mean > st.Latency.Max {
				t.Errorf("size %d: latency %+v", size, st.Latency)
			}
			if g.Sent() != n {
				t.Errorf("Sent = %d, want %d", g.Sent(), n)
			}
		}
	}
}

func TestGeneratorFrames(t *testing.T) {
	var c capture
	clock := int64(1000)
	cfg := GeneratorConfig{
		SrcMAC: MAC{2, 1, 1, 1, 1, 1}, DstMAC: MAC{2, 2, 2, 2, 2, 2},
		SrcIP: netip.MustParseAddr("10.1.255.254"), DstIP: netip.MustParseAddr("10.2.0.1"),
		SrcPort: 65534, DstPort: 4000, FrameSize: 100, Flows: 3, Vary: VarySrcIP,
		Now: func() int64 { clock += 7; return clock },
	}
	g := newGenerator(t, cfg, &c)
	g.Emit(7)
	frames := c.all()
	if len(frames) != 7 {
		t.Fatalf("got %d frames, want 7", len(frames))
	}
	wantSrc := []string{"10.1.255.254", "10.1.255.255", "10.2.0.0"} // the increment carries across octets
	for i, f := range frames {
		if len(f) != 96 {
			t.Fatalf("frame %d is %d bytes, want 96", i, len(f))
		}
		p, err := ParseUDP4(f)
		if err != nil || !p.IPChecksumOK || !p.UDPChecksumOK {
			t.Fatalf("frame %d: err %v checksums ok ip %v udp %v", i, err, p.IPChecksumOK, p.UDPChecksumOK)
		}
		if p.SrcMAC != cfg.SrcMAC || p.DstMAC != cfg.DstMAC || p.DstIP != cfg.DstIP.As4() || p.SrcPort != 65534 || p.DstPort != 4000 {
			t.Errorf("frame %d addressing: %+v", i, p)
		}
		if got := netip.AddrFrom4(p.SrcIP).String(); got != wantSrc[i%3] {
			t.Errorf("frame %d source %s, want %s", i, got, wantSrc[i%3])
		}
		seq, stamp, ok := parseProbe(p.Payload)
		if !ok || seq != uint64(i) || stamp != 1000+7*int64(i+1) {
			t.Errorf("frame %d probe: seq %d stamp %d ok %v", i, seq, stamp, ok)
		}
	}

	// Source ports wrap around modulo 2^16 like the addresses carry.
	var c2 capture
	cfg.Vary = VarySrcPort
	g2 := newGenerator(t, cfg, &c2)
	g2.Emit(4)
	for i, want := range []uint16{65534, 65535, 0, 65534} {
		p, err := ParseUDP4(c2.all()[i])
		if err != nil || !p.UDPChecksumOK || p.SrcPort != want || p.SrcIP != cfg.SrcIP.As4() {
			t.Errorf("frame %d: err %v ok %v source %v:%d, want port %d", i, err, p.UDPChecksumOK, p.SrcIP, p.SrcPort, want)
		}
	}
}

func TestGeneratorConfigErrors(t *testing.T) {
	for _, cfg := range []GeneratorConfig{
		{FrameSize: 63},
		{FrameSize: MaxFrameSize + 1},
		{Flows: -1},
		{Flows: 65537},
		{Vary: 7},
		{Rate: -1},
		{SrcIP: netip.MustParseAddr("2001:db8::1")},
		{DstIP: netip.MustParseAddr("::1")},
	} {
		if _, err := NewGenerator(cfg, NewSink(nil)); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	if _, err := NewGenerator(GeneratorConfig{}, nil); err == nil {
		t.Error("nil peer accepted")
	}
}

func TestGeneratorEmitAllocatesNothing(t *testing.T) {
	sink := NewSink(nil)
	g := newGenerator(t, GeneratorConfig{Flows: 16}, sink)
	if a := testing.AllocsPerRun(100, func() { g.Emit(64) }); a != 0 {
		t.Errorf("Emit(64) into a Sink allocates %v times per run, want 0", a)
	}
	if st := sink.Stats(); st.Received != g.Sent() || st.Lost != 0 {
		t.Errorf("sink received %d of %d, lost %d", st.Received, g.Sent(), st.Lost)
	}
}

func TestGeneratorStartCount(t *testing.T) {
	sink := NewSink(nil)
	g := newGenerator(t, GeneratorConfig{Count: 5000, Batch: 7, Flows: 3}, sink)
	g.Emit(10) // counts towards Count
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Start(); err == nil {
		t.Error("second Start while running succeeded")
	}
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("generator with Count 5000 did not finish")
	}
	g.Stop()
	st := sink.Stats()
	if g.Sent() != 5000 || st.Received != 5000 || st.Lost != 0 || st.NextSeq != 5000 {
		t.Errorf("sent %d, sink received %d lost %d next %d; want 5000, 5000, 0, 5000", g.Sent(), st.Received, st.Lost, st.NextSeq)
	}
}

func TestGeneratorStartStop(t *testing.T) {
	sink := NewSink(nil)
	g := newGenerator(t, GeneratorConfig{}, sink)
	for round := range 2 {
		before := g.Sent()
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for g.Sent() < before+1000 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		g.Stop()
		select {
		case <-g.Done():
		default:
			t.Fatal("Done not closed after Stop")
		}
		after := g.Sent()
		if after < before+1000 {
			t.Fatalf("round %d: unpaced generator sent only %d frames in 5 s", round, after-before)
		}
		time.Sleep(5 * time.Millisecond)
		if g.Sent() != after {
			t.Fatalf("round %d: frames sent after Stop returned", round)
		}
	}
	if st := sink.Stats(); st.Received != g.Sent() || st.Lost != 0 || st.OutOfOrder != 0 {
		t.Errorf("sink %+v after %d sent", st, g.Sent())
	}
}

// TestGeneratorPacing checks that pacing works at all: a loose functional
// bound, not a speed measurement. The upper bound is the one that matters
// (an unpaced loop would send millions); the lower bound allows for a busy,
// race-instrumented machine.
func TestGeneratorPacing(t *testing.T) {
	for _, c := range []struct {
		rate     float64
		duration time.Duration
	}{
		{100_000, 100 * time.Millisecond},
		{1000, 100 * time.Millisecond},
	} {
		sink := NewSink(nil)
		g := newGenerator(t, GeneratorConfig{Rate: c.rate, Duration: c.duration}, sink)
		if err := g.Start(); err != nil {
			t.Fatal(err)
		}
		<-g.Done()
		want := c.rate * c.duration.Seconds()
		got := float64(g.Sent())
		if got > want*1.15+2 || got < want*0.5 {
			t.Errorf("rate %v pps for %v: sent %v frames, want about %v", c.rate, c.duration, got, want)
		}
		t.Logf("rate %v pps for %v: sent %v frames (ideal %v)", c.rate, c.duration, got, want)
	}
}

func TestGeneratorVariesOnlyTheFlowField(t *testing.T) {
	// With 4 flows, frames i and i+4 differ only in the probe and checksums.
	var c capture
	g := newGenerator(t, GeneratorConfig{Flows: 4, FrameSize: 128}, &c)
	g.Emit(8)
	f := c.all()
	for i := range 4 {
		a, b := f[i], f[i+4]
		for j := range a {
			inProbe := j >= UDP4FrameLen(0) && j < UDP4FrameLen(ProbeLen)
			isChecksum := j == 14+20+6 || j == 14+20+7
			if a[j] != b[j] && !inProbe && !isChecksum {
				t.Fatalf("frames %d and %d differ at byte %d", i, i+4, j)
			}
		}
		if binary.BigEndian.Uint16(a[34:]) != 49152+uint16(i) {
			t.Errorf("flow %d source port %d", i, binary.BigEndian.Uint16(a[34:]))
		}
	}
}

func BenchmarkGeneratorEmit(b *testing.B) {
	for _, size := range []int{64, 1518} {
		b.Run(sizeName(size), func(b *testing.B) {
			g := newGenerator(b, GeneratorConfig{FrameSize: size, Flows: 16}, EndpointFunc(func([]byte) {}))
			b.ReportAllocs()
			b.SetBytes(int64(size - FCSLen))
			for b.Loop() {
				g.Emit(1)
			}
		})
	}
	b.Run("batch32", func(b *testing.B) {
		g := newGenerator(b, GeneratorConfig{Flows: 16}, EndpointFunc(func([]byte) {}))
		b.ReportAllocs()
		for b.Loop() {
			g.Emit(32)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*32), "ns/frame")
	})
}

func sizeName(size int) string { return fmt.Sprintf("size%d", size) }
