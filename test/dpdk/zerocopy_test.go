package dpdk_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/zcnet/zcnet/engine"
	"github.com/zcnet/zcnet/vhost"
)

// End-to-end tests of the zero-copy data path with dpdk-testpmd as the
// guest: generator -> simulated 82599 -> (NIC writes into the guest's
// mbufs) -> testpmd macswap -> (NIC reads from the guest's mbufs) ->
// simulated 82599 -> sink.
//
// Buffer geometry. The engine posts a guest RX chain to the NIC only if
// its first writable piece holds the virtio-net header plus a whole NIC
// buffer (a multiple of 1 KiB); without MRG_RXBUF that NIC buffer must
// also hold a maximum-size frame (1518 bytes), else the port falls back to
// copying (Stats.Copy.SmallBuffer, .Features or .Layout says why).
// virtio-user posts each mbuf as one descriptor starting hdr bytes before
// the mbuf's data, hdr being the 12-byte virtio 1.0 header that it keeps in
// the mbuf's 128-byte headroom: a descriptor of mbuf-size - 128 + 12
// bytes. testpmd's default --mbuf-size, 2176 (2048 + headroom), gives
// 2060-byte descriptors: 2048 bytes for the NIC after the header, enough
// with or without MRG_RXBUF. The tests give it explicitly. zcMbufSmall
// (1024: 908-byte descriptors, under header + 1 KiB) is a size at which
// every received frame must be copied.
const (
	zcMbufSize  = 2176
	zcMbufSmall = 1024
	zcQueueSize = 1024 // guest ring size and buffers posted: at 5 kpps, 200 ms of frames
	zcRate      = 5000 // generator frames per second
	zcTraffic   = 2 * time.Second
)

// zcScenario is one guest configuration.
type zcScenario struct {
	name    string
	devargs string // net_virtio_user arguments beyond path, queues, queue_size
	mrg     bool
	packed  bool
	mbuf    int
	// copyReason, if set, is the copy fallback the engine must choose for
	// this geometry, and every frame must then be copied.
	copyReason func(engine.CopyReasons) uint64
	// reconnect: TestZeroCopyTestpmdReconnect runs this scenario too (one
	// per ring layout keeps the test short).
	reconnect bool
	// guestMAC: the guest has its own MAC (testpmd's mac= devarg, and the
	// port's configured MAC) on a NIC port that serves two guest slots,
	// so the NIC steers by it (pools) and frames are addressed to it.
	guestMAC string
	// vf: the NIC port is VF 0 of a PF the host's driver keeps (see
	// zcRigOptions.vf); frames: the generator sends exactly this many
	// (0: as many as zcTraffic at zcRate).
	vf     bool
	frames uint64
}

func (sc zcScenario) features() uint64 {
	f := vhost.DefaultFeatures
	if sc.packed {
		f |= vhost.FRingPacked
	}
	return f
}

func (sc zcScenario) vdev(sock string) string {
	return fmt.Sprintf("net_virtio_user0,path=%s,queues=1,queue_size=%d,%s", sock, zcQueueSize, sc.devargs)
}

// app is testpmd's command line: MAC-swap every received frame back out
// of the same port.
func (sc zcScenario) app() []string {
	// --no-flush-rx: by default testpmd discards, uncounted, whatever
	// its RX queues hold when forwarding starts; a guest that connects
	// while traffic flows must count those frames too.
	args := []string{"--forward-mode=macswap", "--port-topology=loop", "--nb-cores=1", "--no-flush-rx",
		fmt.Sprintf("--rxd=%d", zcQueueSize), fmt.Sprintf("--txd=%d", zcQueueSize),
		fmt.Sprintf("--total-num-mbufs=%d", mbufPool), fmt.Sprintf("--mbuf-size=%d", sc.mbuf)}
	if sc.mbuf < zcMbufSize {
		// testpmd refuses mbufs shorter than a full frame unless told
		// it may scatter frames over several.
		args = append(args, "--enable-scatter")
	}
	return args
}

var zcScenarios = []zcScenario{
	{name: "split-mrg", devargs: "mrg_rxbuf=1", mrg: true, mbuf: zcMbufSize, reconnect: true},
	{name: "split-nomrg", devargs: "mrg_rxbuf=0", mbuf: zcMbufSize},
	{name: "packed-nomrg", devargs: "mrg_rxbuf=0,packed_vq=1", packed: true, mbuf: zcMbufSize, reconnect: true},
	{name: "own-mac-pool", devargs: "mrg_rxbuf=1,mac=52:54:00:d7:0c:01", mrg: true, mbuf: zcMbufSize, guestMAC: "52:54:00:d7:0c:01"},
	// The counter-check: mbufs whose descriptors cannot hold the header
	// and a 1 KiB NIC buffer are copied into.
	{name: "split-mrg-small-mbuf", devargs: "mrg_rxbuf=1", mrg: true, mbuf: zcMbufSmall,
		copyReason: func(c engine.CopyReasons) uint64 { return c.SmallBuffer }},
}

// TestZeroCopyTestpmd runs paced traffic through testpmd in macswap mode
// and checks that every frame came back intact, that the NIC moved every
// frame to and from the guest's own buffers, and that nothing faulted.
func TestZeroCopyTestpmd(t *testing.T) {
	h := checkHost(t, 1)
	for _, sc := range zcScenarios {
		t.Run(sc.name, func(t *testing.T) { runZeroCopy(t, h, sc) })
	}
}

func runZeroCopy(t *testing.T, h host, sc zcScenario) *zcRig {
	r := newZcRig(t, h, zcRigOptions{name: sc.name, features: sc.features(), rate: zcRate, guestMAC: sc.guestMAC, vf: sc.vf, count: sc.frames})
	guest := startTestpmd(t, h, virtioUserLabel, eal(h.backendCPU, h.frontendCPU, "zc-"+sc.name, sc.vdev(r.sock)), sc.app())
	guest.waitForwarding()
	r.waitGuestBuffers(t)
	checkZcFeatures(t, r.session(t).Features, sc)

	if err := r.gen.Start(); err != nil {
		t.Fatal(err)
	}
	if sc.frames == 0 {
		time.Sleep(zcTraffic)
	} else {
		for deadline := time.Now().Add(4 * zcTraffic); r.gen.Sent() < sc.frames && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	r.gen.Stop()
	r.drain()
	sent := r.gen.Sent()
	ss, ps, nc := r.sink.Stats(), r.channel(t).Stats, r.nicCounters()
	t.Logf("generator sent %d; sink %+v", sent, ss)
	t.Logf("port %+v", ps)
	t.Logf("NIC %+v", nc)

	// Every frame back, intact, in order, once.
	if sc.frames != 0 && sent != sc.frames {
		t.Errorf("the generator sent %d frames, want %d", sent, sc.frames)
	}
	if sent < uint64(zcRate*zcTraffic.Seconds()/2) {
		t.Errorf("the generator sent only %d frames in %v at %d/s", sent, zcTraffic, zcRate)
	}
	if ss.Received != sent || ss.Lost != 0 || ss.Duplicates != 0 || ss.OutOfOrder != 0 {
		t.Errorf("sink received %d valid probes of %d sent (lost %d, duplicates %d, reordered %d): want all, once, in order",
			ss.Received, sent, ss.Lost, ss.Duplicates, ss.OutOfOrder)
	}
	if bad := ss.BadIPChecksum + ss.BadUDPChecksum + ss.Malformed + ss.Foreign; bad != 0 {
		t.Errorf("sink saw %d damaged or foreign frames (IP checksum %d, UDP checksum %d, malformed %d, foreign %d)",
			bad, ss.BadIPChecksum, ss.BadUDPChecksum, ss.Malformed, ss.Foreign)
	}
	if n := r.swap.bad.Load(); n != 0 {
		t.Errorf("%d frames left the NIC without the guest's MAC swap", n)
	}
	if d := nc.rxDropped(); d != 0 || nc.TxLost != 0 {
		t.Errorf("the NIC dropped %d received frames (%+v) and %d transmitted ones: at %d/s nothing should be", d, nc, nc.TxLost, zcRate)
	}
	checkEngine(t, sc, ps, sent)
	if ps.Drops != (engine.Drops{}) || ps.GuestErrors != 0 {
		t.Errorf("engine drops %+v, guest errors %d: want none", ps.Drops, ps.GuestErrors)
	}
	if nc.IOMMUFaults != 0 {
		t.Errorf("%d IOMMU faults during traffic", nc.IOMMUFaults)
	}
	if s := r.session(t).Status; s&vhost.StatusNeedsReset != 0 {
		t.Errorf("device status %#x has NEEDS_RESET: a virtqueue broke on something testpmd put in it", s)
	}

	// testpmd's own counters agree with the engine's.
	g := guest.stop()
	t.Logf("testpmd received %d, sent %d (RX-dropped %d, TX-dropped %d)", g.RxPackets, g.TxPackets, g.RxDropped, g.TxDropped)
	if g.RxPackets != ps.RxPackets || g.TxPackets != ps.TxPackets || g.RxDropped+g.TxDropped != 0 {
		t.Errorf("testpmd received %d and sent %d (dropped %d/%d); the engine delivered %d and transmitted %d",
			g.RxPackets, g.TxPackets, g.RxDropped, g.TxDropped, ps.RxPackets, ps.TxPackets)
	}
	// testpmd closed its port: the engine gave the guest's buffers back and
	// the memory left the IOMMU.
	r.waitSession(t, "testpmd exited")
	if err := r.channel(t).Err; err != nil {
		t.Errorf("port: %v", err)
	}
	return r
}

// checkEngine asserts how the engine moved sent frames each way: every one
// zero-copy, or (for a scenario that must fall back) every received frame
// copied for the expected reason.
func checkEngine(t *testing.T, sc zcScenario, ps engine.Stats, sent uint64) {
	t.Helper()
	if ps.RxPackets != sent || ps.TxPackets != sent {
		t.Errorf("engine delivered %d frames to the guest and transmitted %d, want %d each", ps.RxPackets, ps.TxPackets, sent)
	}
	if ps.TxZeroCopy != ps.TxPackets || ps.TxCopied != 0 {
		t.Errorf("TX: %d of %d frames zero-copy, %d copied (reasons %+v): the NIC must read every frame from the guest's mbufs",
			ps.TxZeroCopy, ps.TxPackets, ps.TxCopied, ps.Copy)
	}
	if sc.copyReason != nil {
		if ps.RxCopied != ps.RxPackets || ps.RxZeroCopy != 0 || sc.copyReason(ps.Copy) != ps.RxCopied {
			t.Errorf("RX with %d-byte mbufs: %d zero-copy, %d copied (reasons %+v): want every frame copied for the expected reason",
				sc.mbuf, ps.RxZeroCopy, ps.RxCopied, ps.Copy)
		}
		return
	}
	if ps.RxZeroCopy != ps.RxPackets || ps.RxCopied != 0 || ps.Copy != (engine.CopyReasons{}) {
		t.Errorf("RX: %d of %d frames zero-copy, %d copied (reasons %+v): the NIC must write every frame into the guest's mbufs",
			ps.RxZeroCopy, ps.RxPackets, ps.RxCopied, ps.Copy)
	}
}

// checkZcFeatures asserts that the session negotiated what sc asked for.
func checkZcFeatures(t *testing.T, f uint64, sc zcScenario) {
	t.Helper()
	t.Logf("negotiated virtio features %#x", f)
	if got := f&vhost.NetFMrgRxbuf != 0; got != sc.mrg {
		t.Errorf("MRG_RXBUF negotiated = %v, want %v (devargs %s)", got, sc.mrg, sc.devargs)
	}
	if got := f&vhost.FRingPacked != 0; got != sc.packed {
		t.Errorf("RING_PACKED negotiated = %v, want %v (devargs %s)", got, sc.packed, sc.devargs)
	}
}

// Reconnect timing: traffic runs this long with the first guest, then
// without any guest, then with the second guest once it has settled.
const (
	zcFirstGuest = 700 * time.Millisecond
	zcNoGuest    = 300 * time.Millisecond
	zcSettle     = 100 * time.Millisecond
	zcSecond     = time.Second
)

// TestZeroCopyTestpmdReconnect kills testpmd (SIGKILL, no goodbye on the
// socket) while frames flow through its mbufs, checks that the engine
// stopped its NIC queues, took every guest buffer back and let the guest's
// memory go from the IOMMU without a fault, then starts a second testpmd
// on the same socket and checks that frames flow zero-copy again.
//
// Loss is expected while no guest is there, and in the first guest's
// rings when it dies; it must all be accounted for. Frames the generator
// sent end up, each in exactly one place:
//
//	sent = NIC drops                       (no descriptor / queue off, packet buffer full, receiver off)
//	     + written by the NIC, never delivered (taken back when the port stopped: Drops.RxQuiesce)
//	     + engine receive drops              (Drops.RxError, RxNoGuestBuffer, RxTooBig)
//	     + delivered, never sent back        (in the killed guest's rings: engine RxPackets minus what the guest sent)
//	     + guest transmit drops              (Drops.TxBadHeader, TxOffload, TxNoCopyBuffer)
//	     + queued on the NIC, not sent       (Drops.TxQuiesce)
//	     + received by the sink
//
// The NIC side (sent = QPRC + drops) and the transmit side (sink = engine
// TxPackets - TxQuiesce) are exact counter identities. The engine tells
// frames from empty buffers among those it takes back from a stopped NIC
// queue (it reads what the NIC completed before the stop), so the frames
// it never delivered equal RxQuiesce; what the killed guest
// held is bounded by its two rings. The second guest's own counters must
// match the engine's exactly: everything lost was lost in the gap.
func TestZeroCopyTestpmdReconnect(t *testing.T) {
	h := checkHost(t, 2)
	for _, sc := range zcScenarios {
		if !sc.reconnect {
			continue
		}
		t.Run(sc.name, func(t *testing.T) { runZeroCopyReconnect(t, h, sc) })
	}
}

func runZeroCopyReconnect(t *testing.T, h host, sc zcScenario) {
	r := newZcRig(t, h, zcRigOptions{name: "reconnect-" + sc.name, features: sc.features(), rate: zcRate})
	first := startTestpmd(t, h, "testpmd-1", eal(h.backendCPU, h.frontendCPU, "zc-reconnect-1-"+sc.name, sc.vdev(r.sock)), sc.app())
	first.waitForwarding()
	r.waitGuestBuffers(t)
	if err := r.gen.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(zcFirstGuest)
	atKill := r.channel(t).Stats
	first.kill()
	// The session ends: the ports stop their NIC queues and give every
	// guest buffer back (ring hook), then the memory leaves the IOMMU
	// (memory hook).
	r.waitSession(t, "testpmd was killed")
	c := r.channel(t)
	posted, inFlight, gone := c.RxPosted, c.TxInFlight, c.Stats
	t.Logf("at the kill: port %+v", atKill)
	t.Logf("guest gone: port %+v; NIC %+v", gone, r.nicCounters())
	if posted != 0 || inFlight != 0 {
		t.Errorf("after the guest left the NIC still holds %d receive buffers and %d transmit packets: they point into unmapped guest memory", posted, inFlight)
	}
	if gone.Restarts <= atKill.Restarts {
		t.Errorf("the port did not stop its NIC queues when the guest left (restarts %d -> %d)", atKill.Restarts, gone.Restarts)
	}
	if err := r.channel(t).Err; err != nil {
		t.Fatalf("port failed when the guest left: %v", err)
	}
	if n := r.nicCounters().IOMMUFaults; n != 0 {
		t.Fatalf("%d IOMMU faults when the guest left", n)
	}
	time.Sleep(zcNoGuest)
	noGuest := r.nicCounters()

	second := startTestpmd(t, h, "testpmd-2", eal(h.backendCPU, h.frontendCPU, "zc-reconnect-2-"+sc.name, sc.vdev(r.sock)), sc.app())
	second.waitForwarding()
	r.waitGuestBuffers(t)
	time.Sleep(zcSettle)
	settled := r.sink.Stats()
	time.Sleep(zcSecond)
	r.gen.Stop()
	r.drain()
	sent := r.gen.Sent()
	ss, ps, nc := r.sink.Stats(), r.channel(t).Stats, r.nicCounters()
	g := second.stop()
	t.Logf("generator sent %d; sink %+v", sent, ss)
	t.Logf("port %+v", ps)
	t.Logf("NIC %+v", nc)
	t.Logf("second testpmd received %d, sent %d (RX-dropped %d, TX-dropped %d)", g.RxPackets, g.TxPackets, g.RxDropped, g.TxDropped)

	// Traffic flows again, zero-copy, and nothing sent once the second
	// guest settled was lost.
	// The floor is low: on a loaded two-core host the pollers can be
	// descheduled for hundreds of milliseconds; loss is checked exactly.
	if got, want := ss.Received-settled.Received, uint64(zcRate*zcSecond.Seconds()/10); got < want {
		t.Errorf("the sink received %d frames in the %v after the second guest settled, want at least %d", got, zcSecond, want)
	}
	if ss.Lost != settled.Lost {
		t.Errorf("%d frames lost after the second guest settled (%d lost before): want none", ss.Lost-settled.Lost, settled.Lost)
	}
	if ps.RxCopied != 0 || ps.TxCopied != 0 || ps.RxZeroCopy != ps.RxPackets || ps.TxZeroCopy != ps.TxPackets {
		t.Errorf("zero-copy RX %d of %d, TX %d of %d; copied RX %d, TX %d (reasons %+v): want every frame zero-copy, across the reconnect too",
			ps.RxZeroCopy, ps.RxPackets, ps.TxZeroCopy, ps.TxPackets, ps.RxCopied, ps.TxCopied, ps.Copy)
	}
	// Nothing moves between the first session's end and the second's
	// start: the second guest's share is what came after. What the guest
	// transmitted must match exactly. Received may fall short by frames
	// the engine delivered while virtio-user was still setting up (it
	// re-sends the memory table and toggles the rings after DRIVER_OK, and
	// testpmd counts only from its port start): those never come back, so
	// they must be among the frames the sink saw lost before the guest
	// settled.
	rxB, txB := ps.RxPackets-gone.RxPackets, ps.TxPackets-gone.TxPackets
	if g.RxPackets > rxB || g.TxPackets != txB || g.RxDropped+g.TxDropped != 0 {
		t.Errorf("second testpmd received %d and sent %d (dropped %d/%d); the engine delivered %d and transmitted %d in its session: want sent equal, received no more than delivered, no drops",
			g.RxPackets, g.TxPackets, g.RxDropped, g.TxDropped, rxB, txB)
	}
	if early := rxB - g.RxPackets; early > settled.Lost {
		t.Errorf("the engine delivered %d frames the second testpmd never counted, more than the %d the sink lost before the guest settled", early, settled.Lost)
	} else if early > 0 {
		t.Logf("%d frames delivered during the second guest's set-up were not counted by testpmd (within the %d lost before it settled)", early, settled.Lost)
	}

	// The books balance (see the function comment).
	if bad := ss.BadIPChecksum + ss.BadUDPChecksum + ss.Malformed + ss.Foreign + ss.Duplicates; bad != 0 || ss.Received != ss.Frames {
		t.Errorf("sink: %d of %d frames valid probes; bad or duplicate: %d", ss.Received, ss.Frames, bad)
	}
	if n := r.swap.bad.Load(); n != 0 {
		t.Errorf("%d frames left the NIC without the guest's MAC swap", n)
	}
	nicDrops := nc.rxDropped()
	if sent != nc.Queued+nicDrops {
		t.Errorf("NIC: generator sent %d, the NIC wrote %d into queue 0 and dropped %d (%+v): %d unaccounted for",
			sent, nc.Queued, nicDrops, nc, int64(sent)-int64(nc.Queued+nicDrops))
	}
	if nicDrops == 0 || noGuest.rxDropped() == 0 {
		t.Errorf("the NIC dropped nothing while no guest was there (%+v): the gap did not happen", noGuest)
	}
	d := ps.Drops
	if ss.Frames != nc.Transmitted || nc.Transmitted+d.TxQuiesce != ps.TxPackets || nc.TxLost != 0 {
		t.Errorf("transmit: the engine queued %d frames, %d were abandoned when the port stopped, the NIC sent %d (lost %d), the sink got %d",
			ps.TxPackets, d.TxQuiesce, nc.Transmitted, nc.TxLost, ss.Frames)
	}
	rxDrops := d.RxError + d.RxNoGuestBuffer + d.RxTooBig
	txDrops := d.TxBadHeader + d.TxOffload + d.TxNoCopyBuffer
	undelivered := int64(nc.Queued) - int64(ps.RxPackets+rxDrops)
	if undelivered != int64(d.RxQuiesce) {
		t.Errorf("the NIC wrote %d frames, the engine delivered %d and dropped %d: %d neither, but it counted %d frames lost when the port stopped",
			nc.Queued, ps.RxPackets, rxDrops, undelivered, d.RxQuiesce)
	}
	inGuest := int64(ps.RxPackets) - int64(ps.TxPackets+txDrops)
	if inGuest < 0 || inGuest > 2*zcQueueSize {
		t.Errorf("the engine delivered %d frames to the guests and took %d back from them: %d held by the killed guest, want 0 to %d (its two rings)",
			ps.RxPackets, ps.TxPackets+txDrops, inGuest, 2*zcQueueSize)
	}
	t.Logf("sent %d = sink %d + NIC drops %d + undelivered %d + engine RX drops %d + in the killed guest %d + guest TX drops %d + abandoned on the NIC %d",
		sent, ss.Frames, nicDrops, undelivered, rxDrops, inGuest, txDrops, d.TxQuiesce)
	if sum := int64(ss.Frames+nicDrops+rxDrops+txDrops+d.TxQuiesce) + undelivered + inGuest; sum != int64(sent) || ss.Lost != sent-ss.Frames {
		t.Errorf("accounted for %d of %d frames sent; the sink counts %d lost of %d", sum, sent, ss.Lost, sent-ss.Frames)
	}
	r.waitSession(t, "the second testpmd exited")
}
