package engine

import (
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
)

// TestRxHostBufferFramesDoNotStarveGuest reproduces the receive fallback
// starvation the testpmd end-to-end test found. A zero-copy guest runs dry,
// so the channel posts a burst of host buffers; then the guest posts every
// buffer it has at once. If those went to the NIC behind the host buffers,
// frames landing in the host buffers would wait for a guest buffer that
// only the frames behind them (in guest buffers, delivered after them, in
// order) could ever free: nothing moves again and the NIC drops
// everything. The channel must deliver every frame, in order.
func TestRxHostBufferFramesDoNotStarveGuest(t *testing.T) {
	const ring = 64 // the guest's buffers all fit on the NIC (127)
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 2048, QueueSize: ring}, frame: 512})
	r.postRx(t, 1) // starts the RX queue zero-copy
	r.gen.Emit(1)
	r.step()
	first, err := r.g.Receive(0) // not reposted: the guest is dry now
	if err != nil || len(first) != 1 {
		t.Fatalf("guest received %d frames (%v), want 1", len(first), err)
	}
	r.channel.Poll() // ... so the channel posts host buffers
	if err := r.g.PostRx(0, ring); err != nil {
		t.Fatal(err)
	}
	r.channel.Poll() // the guest's whole ring is available to the channel

	// Traffic in bursts the NIC has room for; the guest reposts what it
	// receives (r.receive), as testpmd does.
	const n = 8 * ring
	got := first
	for sent := 0; sent < n; sent += 16 {
		r.gen.Emit(16)
		got = append(got, r.receive(t, 16)...)
	}
	checkIntact(t, got, r.input.take())
	st := r.channel.Stats()
	t.Logf("%d frames copied from host buffers, %d zero-copy", st.Copy.NoGuestBuffer, st.RxZeroCopy)
	// The host buffers serve the transition only: zero-copy resumes.
	if st.Copy.NoGuestBuffer == 0 || st.RxZeroCopy < n/2 {
		t.Fatalf("want a few frames in host buffers, then zero-copy again: %+v", st)
	}
	if st.RxPackets != n+1 {
		t.Fatalf("channel delivered %d frames, want %d: %+v", st.RxPackets, n+1, st)
	}
	if err := r.channel.Close(); err != nil {
		t.Fatal(err)
	}
	checkPoolWhole(t, r.channel)
}

// TestRxLargeGuestBuffersFallBackToHostBuffers: a zero-copy guest with
// 4 KiB receive buffers runs dry for a moment. The NIC's buffer size must
// let it take the channel's 2 KiB host buffers, so that the frames arriving
// then wait there and reach the guest by copy when it posts again, none
// lost and in order; then zero-copy resumes.
func TestRxLargeGuestBuffersFallBackToHostBuffers(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, frame: 1518})
	r.postRx(t, 8)
	r.gen.Emit(8)
	// The guest does not repost: its 8 buffers fill and it is dry.
	var got []guest.Packet
	for range 4 {
		r.step()
		pk, err := r.g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pk...)
	}
	const dry = 24
	r.gen.Emit(dry)
	for range 4 {
		r.step()
	}
	r.dev.LockDataPath()
	held, hostOut := len(r.channel.rx.pending), r.channel.rx.hostOut
	r.dev.UnlockDataPath()
	if len(got) != 8 || held != dry {
		t.Fatalf("while the guest is dry: guest got %d frames (want 8), %d wait in host buffers (want %d); stats %+v",
			len(got), held, dry, r.channel.Stats())
	}
	if err := r.g.PostRx(0, 64); err != nil {
		t.Fatal(err)
	}
	got = append(got, r.receive(t, dry)...)
	// The host buffers still on the NIC take the next frames; then the
	// guest's buffers do again.
	for range 4 {
		r.gen.Emit(16)
		got = append(got, r.receive(t, 16)...)
	}
	checkIntact(t, got, r.input.take())
	st := r.channel.Stats()
	if st.Copy.NoGuestBuffer != uint64(hostOut) || st.RxZeroCopy != uint64(len(got)-hostOut) || st.Drops != (Drops{}) {
		t.Fatalf("want %d frames copied from host buffers (NoGuestBuffer), the other %d zero-copy, no drops: %+v",
			hostOut, len(got)-hostOut, st)
	}
	if err := r.channel.Close(); err != nil {
		t.Fatal(err)
	}
	checkPoolWhole(t, r.channel)
}

// TestZeroCopyBufSize: the NIC buffer size never exceeds what the largest
// frame needs, and host buffers stand in whenever they are large enough.
func TestZeroCopyBufSize(t *testing.T) {
	for _, c := range []struct {
		guest, maxFrame, pool int
		mrg                   bool
		want                  int
		fallback              bool
	}{
		{guest: 3072, maxFrame: 1518, pool: 2048, mrg: true, want: 2048, fallback: true},
		{guest: 3072, maxFrame: 1518, pool: 2048, mrg: false, want: 2048, fallback: true},
		{guest: 1024, maxFrame: 1518, pool: 2048, mrg: true, want: 1024, fallback: true},
		{guest: 16384, maxFrame: 9018, pool: 2048, mrg: true, want: 2048, fallback: true},
		{guest: 16384, maxFrame: 9018, pool: 2048, mrg: false, want: 9216, fallback: false},
		{guest: 16384, maxFrame: 9018, pool: 10240, mrg: false, want: 9216, fallback: true},
	} {
		got, fb := zeroCopyBufSize(c.guest, c.maxFrame, c.pool, c.mrg)
		if got != c.want || fb != c.fallback {
			t.Errorf("guest %d, max frame %d, pool %d, mrg %v: NIC buffers %d, fallback %v; want %d, %v",
				c.guest, c.maxFrame, c.pool, c.mrg, got, fb, c.want, c.fallback)
		}
	}
}

// TestRxBurstBeyondGuestRing: a burst longer than the buffers the guest
// has posted arrives while the guest takes nothing. The channel keeps the NIC
// supplied with host buffers, so the NIC takes the whole burst out of its
// packet buffer (which would overflow, dropping frames, under a longer
// burst) and the frames wait in host memory; when the guest reposts they
// reach it in order, by copy, none lost, and no buffer comes back to the
// guest empty.
func TestRxBurstBeyondGuestRing(t *testing.T) {
	const posted, burst = 32, 240
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 2048}, frame: 512})
	r.postRx(t, posted)
	for range burst / 16 {
		r.gen.Emit(16)
		r.step()
		r.step()
	}
	r.dev.LockDataPath()
	waiting := len(r.channel.rx.pending)
	r.dev.UnlockDataPath()
	if waiting != burst-posted {
		t.Fatalf("%d frames wait in host buffers, want %d: the whole burst of %d taken off the NIC, %d of it into the guest's buffers", waiting, burst-posted, burst, posted)
	}
	got := r.receive(t, burst)
	checkIntact(t, got, r.input.take())
	st := r.channel.Stats()
	if st.RxZeroCopy != posted || st.Copy.NoGuestBuffer != burst-posted || st.Drops != (Drops{}) {
		t.Fatalf("want %d frames zero-copy and %d copied from host buffers, no drop: %+v", posted, burst-posted, st)
	}
	if r.g.EmptyRx != 0 {
		t.Fatalf("guest got %d buffers back empty", r.g.EmptyRx)
	}
	if c := r.pf.Counters(); c.RxFIFOFull != 0 {
		t.Fatalf("NIC missed %d frames", c.RxFIFOFull)
	}
	// Zero copy resumes once the guest has buffers to spare and the host
	// buffers still on the NIC (at most rxLowWater) have been used.
	if err := r.g.PostRx(0, r.g.Ring(0).Free()); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		r.gen.Emit(16)
		r.receive(t, 16)
	}
	if st2 := r.channel.Stats(); st2.RxZeroCopy == st.RxZeroCopy {
		t.Fatalf("no frame zero-copy after the burst: %+v", st2)
	}
}
