package guest_test

import (
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// TestEchoOwnMAC: an echo guest told its MAC (RunEchoAs) counts a
// unicast frame addressed to another MAC as misdelivered and does not
// echo it; its own frames, a broadcast and a multicast it echoes, and
// counts the broadcast. Without a MAC (RunEcho) it echoes everything and
// counts nothing misdelivered. The back end is the vhost loopback, which
// returns what the guest transmits with the MACs swapped: the test
// queues frames whose source is the destination wanted, and the loopback
// delivers them to the echo guest.
func TestEchoOwnMAC(t *testing.T) {
	own := [6]byte{0x52, 0x54, 0, 0, 0, 0x01}
	other := [6]byte{0x52, 0x54, 0, 0, 0, 0x02}
	bcast := [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	mcast := [6]byte{0x01, 0x00, 0x5e, 0, 0, 0x01}
	peer := [6]byte{0x02, 0, 0, 0, 0, 0x09}
	for _, check := range []bool{true, false} {
		b := startBackend(t, vhost.Config{})
		g := dial(t, b, guest.EchoOptions)
		// Delivered to the guest as: to own, to other, broadcast,
		// multicast, to own.
		for i, dst := range [][6]byte{own, other, bcast, mcast, own} {
			f := frame(i, 60)
			copy(f[0:6], peer[:])
			copy(f[6:12], dst[:])
			if err := g.QueueTx(0, vhost.NetHeader{}, f); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.FlushTx(0); err != nil {
			t.Fatal(err)
		}
		var e *guest.Echo
		var err error
		if check {
			e, err = guest.RunEchoAs(g, own)
		} else {
			e, err = guest.RunEcho(g)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		b.loop.Poll() // the five frames to the guest, once
		for deadline := time.Now().Add(5 * time.Second); e.Received() < 5 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		// Let the guest finish the round it counted the frames in.
		time.Sleep(20 * time.Millisecond)
		wantSent, wantMis := uint64(4), uint64(1)
		if !check {
			wantSent, wantMis = 5, 0
		}
		if e.Received() != 5 || e.Sent() != wantSent || e.Misdelivered() != wantMis || e.Broadcasts() != 1 || e.Dropped() != 0 {
			t.Errorf("check %v: received %d, echoed %d, misdelivered %d, broadcasts %d, dropped %d; want 5, %d, %d, 1, 0",
				check, e.Received(), e.Sent(), e.Misdelivered(), e.Broadcasts(), e.Dropped(), wantSent, wantMis)
		}
		if m, ok := e.MAC(); ok != check || (check && m != own) {
			t.Errorf("check %v: MAC() = %x, %v", check, m, ok)
		}
		// The echoes come back through the loopback: the frame to the
		// other MAC is not among them when the guest checks.
		before := b.loop.Counters().Frames
		b.loop.Poll()
		if d := b.loop.Counters().Frames - before; d != wantSent {
			t.Errorf("check %v: the guest transmitted %d echoes, want %d", check, d, wantSent)
		}
		e.Close()
	}
}
