package wire

import (
	"slices"
	"testing"
)

// TestGeneratorDestinations: unicast frames go to DstMACs in turn, every
// BroadcastEvery-th frame to the broadcast address without taking a
// unicast turn; broadcast frames carry no probe and valid checksums, and
// the probes of the unicast frames are numbered without gaps.
func TestGeneratorDestinations(t *testing.T) {
	dests := []MAC{{2, 0, 0, 0, 0, 0xa}, {2, 0, 0, 0, 0, 0xb}, {2, 0, 0, 0, 0, 0xc}}
	var c capture
	g := newGenerator(t, GeneratorConfig{DstMACs: dests, BroadcastEvery: 4, Flows: 2}, &c)
	g.Emit(5)
	g.Emit(17) // the turn and the broadcast count carry across calls
	frames := c.all()
	if len(frames) != 22 {
		t.Fatalf("got %d frames, want 22", len(frames))
	}
	uni := 0
	for i, f := range frames {
		p, err := ParseUDP4(f)
		if err != nil || !p.IPChecksumOK || !p.UDPChecksumOK {
			t.Fatalf("frame %d: err %v checksums ok ip %v udp %v", i, err, p.IPChecksumOK, p.UDPChecksumOK)
		}
		seq, _, probe := parseProbe(p.Payload)
		if (i+1)%4 == 0 {
			if p.DstMAC != broadcastMAC || probe {
				t.Errorf("frame %d: to %s, probe %v; want a broadcast without a probe", i, p.DstMAC, probe)
			}
			continue
		}
		if want := dests[uni%3]; p.DstMAC != want || !probe || seq != uint64(uni) {
			t.Errorf("frame %d: to %s, probe %v seq %d; want %s, seq %d", i, p.DstMAC, probe, seq, want, uni)
		}
		uni++
	}
	// 22 frames: 5 broadcasts, 17 unicast, 6+6+5.
	if g.Sent() != 22 || g.Broadcasts() != 5 || g.Probes() != 17 || !slices.Equal(g.SentTo(), []uint64{6, 6, 5}) {
		t.Errorf("Sent %d, Broadcasts %d, Probes %d, SentTo %v; want 22, 5, 17, [6 6 5]", g.Sent(), g.Broadcasts(), g.Probes(), g.SentTo())
	}

	// A sink verifying the stream sees the broadcasts as foreign frames
	// and no gap in the probes.
	sink := NewSink(nil)
	g2 := newGenerator(t, GeneratorConfig{DstMACs: dests, BroadcastEvery: 3}, sink)
	g2.Emit(300)
	if st := sink.Stats(); st.Received != 200 || st.Foreign != 100 || st.Lost != 0 || st.NextSeq != 200 || g2.Probes() != 200 {
		t.Errorf("sink %+v, probes %d: want 200 probes received, 100 broadcasts foreign, none lost", st, g2.Probes())
	}
}

// TestGeneratorOneDestination: without DstMACs and broadcasts the
// destination is DstMAC and SentTo has one entry; a single DstMACs entry
// is the same as DstMAC; BroadcastEvery alone alternates DstMAC and
// broadcasts.
func TestGeneratorOneDestination(t *testing.T) {
	dst := MAC{2, 9, 9, 9, 9, 9}
	for _, cfg := range []GeneratorConfig{{DstMAC: dst}, {DstMACs: []MAC{dst}}} {
		var c capture
		g := newGenerator(t, cfg, &c)
		g.Emit(3)
		for i, f := range c.all() {
			if p, _ := ParseUDP4(f); p.DstMAC != dst {
				t.Errorf("%+v: frame %d to %s, want %s", cfg, i, p.DstMAC, dst)
			}
		}
		if !slices.Equal(g.SentTo(), []uint64{3}) || g.Broadcasts() != 0 || g.Probes() != 3 {
			t.Errorf("%+v: SentTo %v, Broadcasts %d, Probes %d", cfg, g.SentTo(), g.Broadcasts(), g.Probes())
		}
	}
	var c capture
	g := newGenerator(t, GeneratorConfig{DstMAC: dst, BroadcastEvery: 2}, &c)
	g.Emit(4)
	for i, f := range c.all() {
		want := dst
		if i%2 == 1 {
			want = broadcastMAC
		}
		if p, _ := ParseUDP4(f); p.DstMAC != want {
			t.Errorf("BroadcastEvery 2: frame %d to %s, want %s", i, p.DstMAC, want)
		}
	}
	if !slices.Equal(g.SentTo(), []uint64{2}) || g.Broadcasts() != 2 {
		t.Errorf("BroadcastEvery 2: SentTo %v, Broadcasts %d", g.SentTo(), g.Broadcasts())
	}
}

func TestGeneratorDestinationErrors(t *testing.T) {
	for _, cfg := range []GeneratorConfig{
		{BroadcastEvery: -1},
		{DstMACs: []MAC{{2, 0, 0, 0, 0, 1}, {}}},
		{DstMACs: []MAC{{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}},
		{DstMACs: []MAC{{0x33, 0x33, 0, 0, 0, 1}}},
	} {
		if _, err := NewGenerator(cfg, NewSink(nil)); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func TestGeneratorDestinationsAllocateNothing(t *testing.T) {
	g := newGenerator(t, GeneratorConfig{DstMACs: []MAC{{2, 0, 0, 0, 0, 1}, {2, 0, 0, 0, 0, 2}}, BroadcastEvery: 5}, NewSink(nil))
	if a := testing.AllocsPerRun(100, func() { g.Emit(64) }); a != 0 {
		t.Errorf("Emit(64) allocates %v times per run, want 0", a)
	}
}
