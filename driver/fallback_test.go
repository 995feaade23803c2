package driver

import (
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
)

// TestRxHostBufferFramesDoNotStarveGuest reproduces the receive fallback
// starvation the testpmd end-to-end test found. A zero-copy guest runs dry,
// so the port posts a burst of host buffers; then the guest posts every
// buffer it has at once. If those went to the NIC behind the host buffers,
// frames landing in the host buffers would wait for a guest buffer that
// only the frames behind them (in guest buffers, delivered after them, in
// order) could ever free: nothing moves again and the NIC drops
// everything. The port must deliver every frame, in order.
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
	r.port.Poll() // ... so the port posts host buffers
	if err := r.g.PostRx(0, ring); err != nil {
		t.Fatal(err)
	}
	r.port.Poll() // the guest's whole ring is available to the port

	// Traffic in bursts the NIC has room for; the guest reposts what it
	// receives (r.receive), as testpmd does.
	const n = 8 * ring
	got := first
	for sent := 0; sent < n; sent += 16 {
		r.gen.Emit(16)
		got = append(got, r.receive(t, 16)...)
	}
	checkIntact(t, got, r.input.take())
	st := r.port.Stats()
	t.Logf("%d frames copied from host buffers, %d zero-copy", st.Copy.NoGuestBuffer, st.RxZeroCopy)
	// The host buffers serve the transition only: zero-copy resumes.
	if st.Copy.NoGuestBuffer == 0 || st.RxZeroCopy < n/2 {
		t.Fatalf("want a few frames in host buffers, then zero-copy again: %+v", st)
	}
	if st.RxPackets != n+1 {
		t.Fatalf("port delivered %d frames, want %d: %+v", st.RxPackets, n+1, st)
	}
	if err := r.port.Close(); err != nil {
		t.Fatal(err)
	}
	checkPoolWhole(t, r.port)
}
