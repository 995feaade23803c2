package engine

import (
	"net"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// migrateGuest moves src's guest to dst (a rig made with noGuest) as
// QEMU's live migration does (guest.Migrate: GET_VRING_BASE on every ring
// of the source, SET_VRING_BASE with those values on the destination).
func migrateGuest(t *testing.T, src, dst *rig) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: dst.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	g := src.g
	src.g = nil
	if err := g.Migrate(c); err != nil {
		g.Close()
		t.Fatal(err)
	}
	dst.g = g
}

// receiveBatch runs r until its guest has n frames, reading them in a batch
// as the QEMU test's guest does: the batch's buffers are posted again only
// after it.
func receiveBatch(t *testing.T, r *rig, n int) []guest.Packet {
	t.Helper()
	got := r.receiveFor(t, n, false)
	if err := r.g.PostRx(0, r.g.Ring(0).Free()); err != nil {
		t.Fatal(err)
	}
	return got
}

// checkRingAccount checks, on a split ring, that every receive buffer the
// guest has out is either available to the device or was used and is
// waiting in the ring: none lost, none returned twice. (A packed ring's
// driver keeps no index to count with; Receive checks its buffer ids.)
func checkRingAccount(t *testing.T, g *guest.Guest) {
	t.Helper()
	r := g.Ring(0)
	out := int(r.Size()) - r.Free()
	if g.Features&vhost.FRingPacked == 0 {
		if got := int(r.AvailIdx() - r.LastUsed()); got != out {
			t.Fatalf("%d buffers out, %d between the driver's avail and used positions", out, got)
		}
	}
}

// TestMigrateRxInFlight migrates a zero-copy guest whose receive ring is
// in every state a stop can find it in: buffers the NIC holds empty (all
// the guest posted, a whole 1024-entry packed ring among them), frames the
// NIC wrote and the channel has not harvested, frames delivered that the
// guest has not read, and receive buffers the guest has not posted again.
// The source is stopped as QEMU stops it (GET_VRING_BASE on every ring),
// the destination started from what it reported (SET_VRING_BASE). The
// guest must get every frame the source's NIC completed and everything
// the destination's NIC receives, intact, every buffer back exactly once
// (an unknown or duplicate id fails Receive), and no buffer written after
// it was returned (PoisonRx).
func TestMigrateRxInFlight(t *testing.T) {
	for _, c := range []struct {
		name   string
		packed bool
		size   uint16
	}{
		{"split-256", false, 256},
		{"split-1024", false, 1024},
		{"packed-256", true, 256},
		{"packed-1024", true, 1024},
	} {
		t.Run(c.name, func(t *testing.T) {
			opt := guest.Options{QueueSize: c.size, RxBufSize: 2048}
			features := vhost.DefaultFeatures
			if c.packed {
				opt.Features = guest.DefaultWanted | vhost.FRingPacked
				features |= vhost.FRingPacked
			}
			ro := rigOptions{guest: opt, features: features, migration: true, rxRing: 2048, frame: 1442}
			src := newRig(t, ro)
			src.g.PoisonRx = true
			src.postRx(t, int(c.size))
			// Several laps of the ring, read in batches.
			for range 3 * int(c.size) / 100 {
				src.gen.Emit(100)
				checkIntact(t, receiveBatch(t, src, 100), src.input.take())
			}
			// Delivered, not read; written by the NIC, not harvested.
			src.gen.Emit(30)
			for range 5 {
				src.step()
			}
			src.gen.Emit(20)
			src.pf.Step()
			if src.rxHeld() == 0 {
				t.Fatal("the NIC holds no guest buffer at the stop")
			}

			dro := ro
			dro.noGuest = true
			dst := newRig(t, dro)
			migrateGuest(t, src, dst)
			// The destination's channel posts the guest's buffers before
			// frames arrive (the NIC drops what reaches a stopped queue).
			dst.channel.Poll()
			checkRingAccount(t, dst.g)
			pk, err := dst.g.Receive(0)
			if err != nil {
				t.Fatal(err)
			}
			checkIntact(t, pk, src.input.take())
			if dst.g.EmptyRx != 0 {
				t.Fatalf("%d receive buffers came back empty: the stop should rewind them", dst.g.EmptyRx)
			}
			if err := dst.g.PostRx(0, dst.g.Ring(0).Free()); err != nil {
				t.Fatal(err)
			}
			// The destination serves the same buffers: more than a ring's
			// worth of frames in batches.
			for range 3 * int(c.size) / 100 {
				dst.gen.Emit(100)
				pk := receiveBatch(t, dst, 100)
				checkIntact(t, pk, dst.input.take())
			}
			if st := src.channel.Stats(); st.Drops.RxQuiesce != 0 || st.RxRewound == 0 {
				t.Fatalf("source: want no frame dropped at the stop and the NIC's empty buffers rewound: %+v", st)
			}
			if st := dst.channel.Stats(); st.RxZeroCopy == 0 || st.RxCopied != 0 {
				t.Fatalf("destination: want everything zero-copy: %+v", st)
			}
		})
	}
}
