package engine

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// TestCopyDeliveryAfterUnusableChain: a frame copied into mergeable guest
// buffers needs more than the guest has posted; among the chains popped
// for it is one the copy cannot use (no writable byte), which goes back
// used at once. The channel must keep the usable chain it took for the next
// attempt: rewinding the ring past the used chain (what it once did) pops
// that chain again and returns it twice, while the usable chain is lost,
// and on a packed ring rewinding past a used descriptor panics the lcore.
// FuzzEngineChains found this.
func TestCopyDeliveryAfterUnusableChain(t *testing.T) {
	for _, c := range []struct {
		name     string
		features uint64
	}{
		{"split", 0},
		{"packed", vhost.FRingPacked},
	} {
		t.Run(c.name, func(t *testing.T) {
			testCopyDeliveryAfterUnusableChain(t, c.features)
		})
	}
}

func testCopyDeliveryAfterUnusableChain(t *testing.T, extra uint64) {
	const frame = 1000
	r := newRig(t, rigOptions{
		channel:  ChannelConfig{ForceCopy: true},
		features: vhost.DefaultFeatures | extra,
		guest:    guest.Options{RxBufSize: 2048, Features: guest.DefaultWanted | extra},
		frame:    frame,
	})
	if r.g.Features&vhost.NetFMrgRxbuf == 0 || r.g.Features&vhost.FRingPacked != extra {
		t.Fatalf("negotiated features %#x: want mergeable buffers and ring layout %#x", r.g.Features, extra)
	}
	rx := r.g.Ring(0)
	gpa, add := rxPoster(t, r, 3)
	const smallLen = 100
	small := add(guest.Buf{GPA: gpa, Len: smallLen, Write: true})
	unusable := add(guest.Buf{GPA: gpa + 4096, Len: 64}) // device-readable only
	rx.Publish()
	r.channel.Poll() // starts the NIC queue, copying

	r.gen.Emit(1)
	for range 8 {
		r.step()
	}
	type used struct {
		head uint16
		len  uint32
	}
	takeUsed := func() []used {
		var u []used
		for {
			h, l, ok := rx.Used()
			if !ok {
				return u
			}
			u = append(u, used{h, l})
		}
	}
	if got := takeUsed(); len(got) != 1 || got[0] != (used{unusable, 0}) {
		t.Fatalf("while the frame waits for room: used entries %+v, want only the unusable chain %d with length 0", got, unusable)
	}
	if st := r.channel.Stats(); st.Drops.RxChainUnusable != 1 || st.RxPackets != 0 {
		t.Fatalf("channel stats %+v: want one unusable chain counted and the frame still waiting", st)
	}

	big := add(guest.Buf{GPA: gpa + 2*4096, Len: 2048, Write: true})
	rx.Publish()
	for range 8 {
		r.step()
	}
	got := takeUsed()
	hl := r.g.HdrLen()
	if len(got) != 2 || got[0] != (used{small, smallLen}) || got[1] != (used{big, uint32(hl + frame - 4 - smallLen)}) {
		t.Fatalf("used entries %+v, want chain %d holding %d bytes then chain %d holding the rest (%d)",
			got, small, smallLen, big, hl+frame-4-smallLen)
	}
	data := append(append([]byte(nil), r.g.Mem.Bytes(gpa, smallLen)...), r.g.Mem.Bytes(gpa+2*4096, uint64(got[1].len))...)
	if nb := uint16(data[10]) | uint16(data[11])<<8; nb != 2 {
		t.Fatalf("header says num_buffers %d, want 2", nb)
	}
	sent := r.input.take()
	if len(sent) != 1 || !bytes.Equal(data[hl:], sent[0]) {
		t.Fatalf("the guest's buffers hold %x, want the frame sent %x", data[hl:], sent)
	}
	if more := takeUsed(); len(more) != 0 {
		t.Fatalf("chains returned again: %+v", more)
	}
	if st := r.channel.Stats(); st.RxPackets != 1 || st.Drops != (Drops{RxChainUnusable: 1}) {
		t.Fatalf("channel stats %+v: want the frame delivered and only the unusable chain dropped", st)
	}
	if err := r.channel.Close(); err != nil {
		t.Fatal(err)
	}
	checkPoolWhole(t, r.channel)
}

// rxPoster allocates pages pages of the rig's guest memory and returns
// their address and a function that adds one chain of one buffer to the
// guest's receive ring 0 (published by the caller).
func rxPoster(t *testing.T, r *rig, pages int) (gpa uint64, add func(guest.Buf) uint16) {
	t.Helper()
	gpa, err := r.g.Mem.Alloc(uint64(pages)*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rx := r.g.Ring(0)
	return gpa, func(b guest.Buf) uint16 {
		t.Helper()
		h, err := rx.Add([]guest.Buf{b}, false)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
}
