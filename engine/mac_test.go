package engine

import (
	"bytes"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
)

// guestAddressed emits n frames to mac from the wire and returns how many
// the guest received, running the rig until the NIC has dealt with them.
func (r *rig) guestAddressed(t *testing.T, mac [6]byte, n int) int {
	t.Helper()
	gen, err := wire.NewGenerator(wire.GeneratorConfig{FrameSize: 128, DstMAC: wire.MAC(mac)}, r.pf)
	if err != nil {
		t.Fatal(err)
	}
	gen.Emit(n)
	got := 0
	for range 200 {
		r.step()
		pk, err := r.g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		got += len(pk)
		if len(pk) > 0 {
			if err := r.g.PostRx(0, len(pk)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return got
}

// TestGuestMACLearned: a guest with a MAC of its own gets its unicast
// frames once it has sent one frame from that address, and follows a
// change of address; before that the NIC's filter drops them, counted.
func TestGuestMACLearned(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, filterMACs: true})
	r.postRx(t, 64)
	own := [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

	filtered := r.pf.Counters().RxFiltered
	if got := r.guestAddressed(t, own, 8); got != 0 {
		t.Fatalf("guest received %d frames to a MAC it never used; want the NIC to filter them", got)
	}
	if d := r.pf.Counters().RxFiltered - filtered; d != 8 {
		t.Fatalf("NIC counted %d filtered frames, want 8", d)
	}
	if mac, _ := r.channel.GuestMAC(); mac != ([6]byte{}) {
		t.Fatalf("GuestMAC = %x before the guest sent anything", mac)
	}

	frame := testFrames(1, 64)[0]
	copy(frame[6:12], own[:])
	r.transmit(t, [][]byte{frame})
	if mac, static := r.channel.GuestMAC(); mac != own || static {
		t.Fatalf("GuestMAC = %x (static %v), want %x learned", mac, static, own)
	}
	if got := r.guestAddressed(t, own, 8); got != 8 {
		t.Fatalf("guest received %d of 8 frames to its learned MAC", got)
	}

	// A multicast source is never learned; a new address is followed only
	// after relearnEvery frames from it.
	bad := append([]byte(nil), frame...)
	bad[6] |= 1
	r.transmit(t, [][]byte{bad})
	moved := [6]byte{0x52, 0x54, 0x00, 0x65, 0x43, 0x21}
	copy(frame[6:12], moved[:])
	frames := make([][]byte, relearnEvery)
	for i := range frames {
		frames[i] = frame
	}
	r.transmit(t, frames[:relearnEvery-1])
	if mac, _ := r.channel.GuestMAC(); mac != own {
		t.Fatalf("GuestMAC = %x after %d frames from another source, want %x kept", mac, relearnEvery-1, own)
	}
	r.transmit(t, frames[relearnEvery-1:])
	if mac, _ := r.channel.GuestMAC(); mac != moved {
		t.Fatalf("GuestMAC = %x, want %x after %d frames from it", mac, moved, relearnEvery)
	}
	if got := r.guestAddressed(t, moved, 4); got != 4 {
		t.Fatalf("guest received %d of 4 frames to its new MAC", got)
	}
	if got := r.guestAddressed(t, own, 4); got != 0 {
		t.Fatalf("guest received %d frames to its old MAC; the filter should have dropped it", got)
	}
	// The channel's own address stays accepted throughout.
	if got := r.guestAddressed(t, [6]byte(sim.DefaultOptions().MAC), 4); got != 4 {
		t.Fatalf("guest received %d of 4 frames to the NIC port's MAC", got)
	}
}

// TestGuestMACConfigured: a configured MAC is accepted before the guest
// sends anything and is not replaced by what the guest sends.
func TestGuestMACConfigured(t *testing.T) {
	own := [6]byte{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}, filterMACs: true,
		channel: ChannelConfig{GuestMAC: own}})
	r.postRx(t, 64)
	if got := r.guestAddressed(t, own, 8); got != 8 {
		t.Fatalf("guest received %d of 8 frames to its configured MAC", got)
	}
	frame := testFrames(1, 64)[0]
	frames := make([][]byte, 2*relearnEvery)
	for i := range frames {
		frames[i] = frame
	}
	r.transmit(t, frames)
	if mac, static := r.channel.GuestMAC(); mac != own || !static {
		t.Fatalf("GuestMAC = %x (static %v), want the configured %x", mac, static, own)
	}
	var m macState
	if err := m.init(nil, [6]byte{0x01, 0, 0x5e, 0, 0, 1}, false); err == nil || !strings.Contains(err.Error(), "01:00:5e:00:00:01 is a multicast address") {
		t.Fatalf("a multicast guest MAC: err = %v, want it refused as multicast", err)
	}
}

// ixgbeMACFilter is the address filter of an 82599 port as one guest's
// MACFilter, for the rig (the appliance's filter also counts guests
// sharing an address).
func ixgbeMACFilter(p *ixgbe.Port) MACFilter { return ixgbeMACs{p} }

type ixgbeMACs struct{ p *ixgbe.Port }

func (f ixgbeMACs) AcceptGuestMAC(prev, mac [6]byte) error {
	if err := f.p.AddMAC(mac[:]); err != nil {
		return err
	}
	// The channel's own address is never removed (RemoveMAC refuses it), and
	// prev is only dropped once mac is in: no moment accepts neither.
	if prev != ([6]byte{}) && prev != mac && !bytes.Equal(prev[:], f.p.MAC()) {
		return f.p.RemoveMAC(prev[:])
	}
	return nil
}
