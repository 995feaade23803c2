package wire

import (
	"sync/atomic"
	"testing"
)

// fakePort stands in for a simulated NIC port: it receives into a Sink and
// transmits whatever its generator builds into the attached peer.
type fakePort struct {
	*Sink
	peer Endpoint
}

func (p *fakePort) Attach(peer Endpoint) { p.peer = peer }

// Deliver implements Endpoint for the generator: it forwards to the peer, as
// a port's TX path would.
type txOf struct{ p *fakePort }

func (t txOf) Deliver(f []byte) { t.p.peer.Deliver(f) }

func TestCableConnect(t *testing.T) {
	a, b := &fakePort{Sink: NewSink(nil)}, &fakePort{Sink: NewSink(nil)}
	c := Connect(a, b)
	genA := newGenerator(t, GeneratorConfig{FrameSize: 100}, txOf{a})
	genB := newGenerator(t, GeneratorConfig{FrameSize: 200}, txOf{b})

	genA.Emit(10)
	genB.Emit(3)
	if st := b.Stats(); st.Received != 10 || st.ReceivedBytes != 10*96 {
		t.Errorf("B received %d frames, %d bytes; want 10, 960", st.Received, st.ReceivedBytes)
	}
	if st := a.Stats(); st.Received != 3 || st.ReceivedBytes != 3*196 {
		t.Errorf("A received %d frames, %d bytes; want 3, 588", st.Received, st.ReceivedBytes)
	}

	c.SetUp(false)
	if c.Up() {
		t.Fatal("cable still up after SetUp(false)")
	}
	genA.Emit(5)
	genB.Emit(2)
	c.SetUp(true)
	genA.Emit(1)
	if st := b.Stats(); st.Received != 11 || st.Lost != 5 {
		t.Errorf("B after a 5-frame outage: received %d lost %d; want 11, 5", st.Received, st.Lost)
	}
	want := CableStats{Frames: 11, Bytes: 11 * 96, DroppedDown: 5}
	if got := c.AtoB(); got != want {
		t.Errorf("AtoB %+v, want %+v", got, want)
	}
	want = CableStats{Frames: 3, Bytes: 3 * 196, DroppedDown: 2}
	if got := c.BtoA(); got != want {
		t.Errorf("BtoA %+v, want %+v", got, want)
	}
}

func TestCableUnplugged(t *testing.T) {
	var got atomic.Int64
	c := NewCable(nil, nil)
	c.A().Deliver(make([]byte, 60))
	c.PlugB(EndpointFunc(func(f []byte) { got.Add(int64(len(f))) }))
	c.A().Deliver(make([]byte, 60))
	c.PlugB(nil)
	c.A().Deliver(make([]byte, 60))
	if got.Load() != 60 {
		t.Errorf("side B received %d bytes, want 60", got.Load())
	}
	if st := c.AtoB(); st.Frames != 1 || st.DroppedUnplugged != 2 || st.DroppedDown != 0 {
		t.Errorf("AtoB %+v", st)
	}
	if st := c.BtoA(); st != (CableStats{}) {
		t.Errorf("BtoA %+v, want nothing", st)
	}
}

func TestTee(t *testing.T) {
	s1, s2 := NewSink(nil), NewSink(nil)
	g := newGenerator(t, GeneratorConfig{}, Tee{s1, s2})
	g.Emit(4)
	if s1.Stats().Received != 4 || s2.Stats().Received != 4 {
		t.Errorf("tee delivered %d and %d, want 4 each", s1.Stats().Received, s2.Stats().Received)
	}
}

func BenchmarkCableToSink(b *testing.B) {
	a, z := &fakePort{Sink: NewSink(nil)}, &fakePort{Sink: NewSink(nil)}
	Connect(a, z)
	g := newGenerator(b, GeneratorConfig{Flows: 16}, txOf{a})
	b.ReportAllocs()
	for b.Loop() {
		g.Emit(1)
	}
}
