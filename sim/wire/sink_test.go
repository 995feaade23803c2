package wire

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// probes returns n generator frames (seq 0..n-1) for a test to deliver in
// any order it likes.
func probes(t *testing.T, n int) [][]byte {
	t.Helper()
	var c capture
	g := newGenerator(t, GeneratorConfig{Flows: 3, FrameSize: 80}, &c)
	g.Emit(n)
	return c.all()
}

func deliverAll(s *Sink, frames ...[]byte) {
	for _, f := range frames {
		s.Deliver(f)
	}
}

func TestSinkDetects(t *testing.T) {
	type counts struct{ received, lost, ooo, dup, late, badIP, badUDP, foreign, malformed, next uint64 }
	get := func(st SinkStats) counts {
		return counts{st.Received, st.Lost, st.OutOfOrder, st.Duplicates, st.Late, st.BadIPChecksum, st.BadUDPChecksum, st.Foreign, st.Malformed, st.NextSeq}
	}
	corrupt := func(f []byte, at int) []byte {
		f = append([]byte(nil), f...)
		f[at] ^= 0x40
		return f
	}
	p := probes(t, 10)
	arp := append([]byte(nil), p[0]...)
	arp[12], arp[13] = 0x08, 0x06
	notProbe := buildUDP4(testHeader(), make([]byte, 30))

	for _, c := range []struct {
		name   string
		frames [][]byte
		want   counts
	}{
		{"in order", p, counts{received: 10, next: 10}},
		{"dropped", [][]byte{p[0], p[1], p[3], p[4]}, counts{received: 4, lost: 1, next: 5}},
		{"dropped first", [][]byte{p[2], p[3]}, counts{received: 2, lost: 2, next: 4}},
		{"dropped tail is not visible", [][]byte{p[0], p[1]}, counts{received: 2, next: 2}},
		{"duplicated", [][]byte{p[0], p[1], p[1], p[2]}, counts{received: 4, dup: 1, next: 3}},
		{"duplicated late", [][]byte{p[0], p[1], p[2], p[0]}, counts{received: 4, dup: 1, next: 3}},
		{"reordered", [][]byte{p[0], p[2], p[1], p[3]}, counts{received: 4, ooo: 1, next: 4}},
		{"reordered far", [][]byte{p[0], p[5], p[4], p[3], p[2], p[1]}, counts{received: 6, ooo: 4, next: 6}},
		{"reordered then duplicated", [][]byte{p[0], p[2], p[1], p[1]}, counts{received: 4, ooo: 1, dup: 1, next: 3}},
		{"payload corrupted", [][]byte{p[0], corrupt(p[1], len(p[1])-1), p[2]}, counts{received: 2, badUDP: 1, lost: 1, next: 3}},
		{"probe corrupted", [][]byte{p[0], corrupt(p[1], UDP4FrameLen(5)), p[2]}, counts{received: 2, badUDP: 1, lost: 1, next: 3}},
		{"ip header corrupted", [][]byte{p[0], corrupt(p[1], 14+8), p[2]}, counts{received: 2, badIP: 1, lost: 1, next: 3}},
		{"address corrupted", [][]byte{p[0], corrupt(p[1], 14+15), p[2]}, counts{received: 2, badIP: 1, badUDP: 1, lost: 1, next: 3}},
		{"foreign", [][]byte{p[0], arp, notProbe, p[1]}, counts{received: 2, foreign: 2, next: 2}},
		{"truncated", [][]byte{p[0], p[1][:40], p[1]}, counts{received: 2, malformed: 1, next: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := NewSink(nil)
			deliverAll(s, c.frames...)
			st := s.Stats()
			if got := get(st); got != c.want {
				t.Errorf("counts %+v\nwant   %+v", got, c.want)
			}
			if st.Frames != uint64(len(c.frames)) {
				t.Errorf("Frames = %d, want %d", st.Frames, len(c.frames))
			}
			var bytes uint64
			for _, f := range c.frames {
				bytes += uint64(len(f))
			}
			if st.Bytes != bytes {
				t.Errorf("Bytes = %d, want %d", st.Bytes, bytes)
			}
		})
	}
}

func TestSinkWindow(t *testing.T) {
	var c capture
	g := newGenerator(t, GeneratorConfig{}, &c)
	g.Emit(2)
	head := c.all()
	c.frames = nil
	g.seq = SinkWindow - 10 // jump ahead: a long burst lost
	g.Emit(1)
	g.seq = 2 * SinkWindow
	g.Emit(1)
	far := c.all()

	s := NewSink(nil)
	deliverAll(s, head[0], far[0]) // seq 0 then SinkWindow-10
	st := s.Stats()
	if st.Lost != SinkWindow-11 || st.NextSeq != SinkWindow-9 {
		t.Fatalf("after a gap: lost %d next %d", st.Lost, st.NextSeq)
	}
	s.Deliver(head[1]) // seq 1, still inside the window: a reordered frame
	if st = s.Stats(); st.OutOfOrder != 1 || st.Lost != SinkWindow-12 {
		t.Fatalf("seq 1 inside window: ooo %d lost %d", st.OutOfOrder, st.Lost)
	}
	s.Deliver(far[1]) // seq 2*SinkWindow slides the window past seq 1
	s.Deliver(head[1])
	s.Deliver(head[0])
	st = s.Stats()
	if st.Late != 2 || st.Duplicates != 0 || st.OutOfOrder != 1 {
		t.Errorf("beyond window: late %d dup %d ooo %d, want 2, 0, 1", st.Late, st.Duplicates, st.OutOfOrder)
	}
	if st.Lost != 2*SinkWindow-3 {
		t.Errorf("lost %d, want %d", st.Lost, 2*SinkWindow-3)
	}
}

func TestSinkRandomLossAndReorder(t *testing.T) {
	// Drop, duplicate and swap frames at random and check the sink's
	// counts against what was done.
	const n = 5000
	p := probes(t, n)
	rng := rand.New(rand.NewPCG(3, 4))
	var order []int
	dropped := 0
	for i := range n {
		if rng.IntN(50) == 0 {
			dropped++
			continue
		}
		order = append(order, i)
	}
	swaps := 0
	for i := 0; i+1 < len(order); i++ {
		if rng.IntN(40) == 0 {
			order[i], order[i+1] = order[i+1], order[i]
			swaps++
			i++ // keep swaps disjoint so each makes exactly one late arrival
		}
	}
	dups := 0
	s := NewSink(nil)
	for _, i := range order {
		s.Deliver(p[i])
		if rng.IntN(60) == 0 {
			s.Deliver(p[i])
			dups++
		}
	}
	st := s.Stats()
	lastSent := order[len(order)-1]
	if order[len(order)-2] > lastSent {
		lastSent = order[len(order)-2]
	}
	// Frames dropped after the highest one received are invisible.
	invisible := 0
	for i := lastSent + 1; i < n; i++ {
		invisible++
	}
	if st.Received != uint64(len(order)+dups) || st.Duplicates != uint64(dups) ||
		st.OutOfOrder != uint64(swaps) || st.Lost != uint64(dropped-invisible) {
		t.Errorf("received %d dup %d ooo %d lost %d; want %d %d %d %d",
			st.Received, st.Duplicates, st.OutOfOrder, st.Lost, len(order)+dups, dups, swaps, dropped-invisible)
	}
}

func TestSinkLatency(t *testing.T) {
	var c capture
	g := newGenerator(t, GeneratorConfig{Now: func() int64 { return 1_000_000 }}, &c)
	g.Emit(1000)
	var rx int64
	s := NewSink(func() int64 { return rx })
	for i, f := range c.all() {
		rx = 1_000_000 + int64(i+1)*1000 // latencies 1 µs .. 1 ms
		s.Deliver(f)
	}
	l := s.Stats().Latency
	if l.Samples != 1000 || l.Min != time.Microsecond || l.Max != time.Millisecond || l.Mean != 500500*time.Nanosecond {
		t.Errorf("latency %+v", l)
	}
	near := func(got time.Duration, want time.Duration) bool {
		d := got - want
		return d < 0 && -d <= want/16 || d >= 0 && d <= want/16
	}
	for _, q := range []struct {
		got, want time.Duration
	}{{l.P50, 500 * time.Microsecond}, {l.P90, 900 * time.Microsecond}, {l.P99, 990 * time.Microsecond}, {l.P999, 999 * time.Microsecond}} {
		if !near(q.got, q.want) {
			t.Errorf("percentile %v, want %v within 1/16", q.got, q.want)
		}
	}

	// A stamp from the future (another clock) counts as zero latency.
	s = NewSink(func() int64 { return 0 })
	s.Deliver(c.all()[0])
	if l := s.Stats().Latency; l.Max != 0 || l.Samples != 1 {
		t.Errorf("negative latency recorded as %+v", l)
	}
}

func TestHistogramBuckets(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	prev := -1
	for v := uint64(0); v < 5000; v++ {
		i := histBucket(v)
		if i < prev || i > prev+1 {
			t.Fatalf("bucket of %d is %d after %d: buckets must be contiguous", v, i, prev)
		}
		prev = i
	}
	for range 100000 {
		v := rng.Uint64() >> rng.IntN(64)
		i := histBucket(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucket %d of %d out of range", i, v)
		}
		lo, hi := histBounds(i)
		if v < lo || v > hi {
			t.Fatalf("%d is in bucket %d = [%d, %d]", v, i, lo, hi)
		}
		if hi-lo > lo/16 {
			t.Fatalf("bucket [%d, %d] wider than 1/16 of its bound", lo, hi)
		}
	}
	if histBucket(^uint64(0)) != histBuckets-1 {
		t.Errorf("largest value in bucket %d, want %d", histBucket(^uint64(0)), histBuckets-1)
	}
}

func TestSinkConcurrent(t *testing.T) {
	p := probes(t, 400)
	s := NewSink(nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(p); i += 4 {
				s.Deliver(p[i])
				_ = s.Stats()
			}
		}()
	}
	wg.Wait()
	if st := s.Stats(); st.Received != 400 || st.Lost != 0 || st.Duplicates != 0 || st.NextSeq != 400 {
		t.Errorf("concurrent delivery: %+v", st)
	}
}

func TestSinkDeliverAllocatesNothing(t *testing.T) {
	p := probes(t, 1)
	s := NewSink(nil)
	if a := testing.AllocsPerRun(1000, func() { s.Deliver(p[0]) }); a != 0 {
		t.Errorf("Sink.Deliver allocates %v times per frame, want 0", a)
	}
}

func TestSinkReset(t *testing.T) {
	p := probes(t, 3)
	s := NewSink(nil)
	deliverAll(s, p[2], p[1], p[0], p[0])
	s.Reset()
	deliverAll(s, p...)
	if st := s.Stats(); st.Received != 3 || st.Lost != 0 || st.OutOfOrder != 0 || st.Duplicates != 0 || st.Frames != 3 || st.Latency.Samples != 3 {
		t.Errorf("after Reset: %+v", st)
	}
}

func BenchmarkSinkDeliver(b *testing.B) {
	for _, size := range []int{64, 1518} {
		b.Run(sizeName(size), func(b *testing.B) {
			// Fresh, in-order sequence numbers: a window's worth of frames
			// made up front, replayed with a Reset at each wrap (outside
			// the timer). Replaying one frame would time the duplicate path.
			var c capture
			g := newGenerator(b, GeneratorConfig{FrameSize: size, Flows: 16}, &c)
			g.Emit(min(SinkWindow, 64<<20/size))
			frames := c.all()
			s := NewSink(nil)
			b.ReportAllocs()
			b.SetBytes(int64(size - FCSLen))
			i := 0
			for b.Loop() {
				if i == len(frames) {
					b.StopTimer()
					if st := s.Stats(); st.Received != uint64(len(frames)) || st.Lost != 0 {
						b.Fatalf("sink %+v after %d frames", st, len(frames))
					}
					s.Reset()
					i = 0
					b.StartTimer()
				}
				s.Deliver(frames[i])
				i++
			}
		})
	}
}

// BenchmarkGeneratorToSink is the whole measurement loop: build, stamp,
// parse, verify and count one frame.
func BenchmarkGeneratorToSink(b *testing.B) {
	s := NewSink(nil)
	g := newGenerator(b, GeneratorConfig{Flows: 16}, s)
	b.ReportAllocs()
	for b.Loop() {
		g.Emit(1)
	}
	if st := s.Stats(); st.Received != g.Sent() || st.Lost != 0 {
		b.Fatalf("sink %+v after %d frames", st, g.Sent())
	}
}
