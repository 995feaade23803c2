package engine

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// TestZeroCopySkipsShortLoneBuffer: among a guest's receive buffers of one
// writable descriptor each (the chains vhost.PopDirect hands the channel
// a burst at a time) is one too short for the NIC's buffer size. It goes
// back used with length 0 at once, counted, and the frames land zero-copy
// in the buffers on either side of it, in order.
func TestZeroCopySkipsShortLoneBuffer(t *testing.T) {
	const frame = 1000
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 2048}, frame: frame})
	rx := r.g.Ring(0)
	gpa, add := rxPoster(t, r, 3)
	first := add(guest.Buf{GPA: gpa, Len: 2048, Write: true})
	short := add(guest.Buf{GPA: gpa + 4096, Len: 100, Write: true})
	last := add(guest.Buf{GPA: gpa + 2*4096, Len: 2048, Write: true})
	rx.Publish()
	r.channel.Poll() // starts the NIC queue, zero-copy: the first chain fits any frame

	r.gen.Emit(2)
	for range 8 {
		r.step()
	}
	hl := r.g.HdrLen()
	want := []struct {
		head uint16
		len  uint32
	}{{short, 0}, {first, uint32(hl + frame - 4)}, {last, uint32(hl + frame - 4)}}
	for i, w := range want {
		h, l, ok := rx.Used()
		if !ok || h != w.head || l != w.len {
			t.Fatalf("used entry %d: %d, %d, %v; want chain %d with length %d", i, h, l, ok, w.head, w.len)
		}
	}
	if h, _, ok := rx.Used(); ok {
		t.Fatalf("chain %d returned again", h)
	}
	sent := r.input.take()
	if len(sent) != 2 {
		t.Fatalf("%d frames sent, want 2", len(sent))
	}
	for i, b := range []uint64{gpa, gpa + 2*4096} {
		if got := r.g.Mem.Bytes(b+uint64(hl), frame-4); !bytes.Equal(got, sent[i]) {
			t.Fatalf("buffer %d holds %x, want the frame sent %x", i, got[:16], sent[i][:16])
		}
	}
	st := r.channel.Stats()
	if st.RxPackets != 2 || st.RxZeroCopy != 2 || st.Drops != (Drops{RxChainUnusable: 1}) {
		t.Fatalf("channel stats %+v: want 2 frames zero-copy and the short chain counted unusable", st)
	}
}

// TestTxBurstBeyondNICRoom: the guest queues more frames than the NIC's
// transmit ring has room for, one in five asking for a checksum offload
// (so served by the Chain path among chains popped a burst at a time by
// vhost.PopDirect). The channel sends what fits and leaves the rest in the
// guest's ring; as the NIC completes, every frame goes out once, in the
// guest's order, intact, zero-copy, and every buffer comes back.
func TestTxBurstBeyondNICRoom(t *testing.T) {
	r := newRig(t, rigOptions{})
	const frames = 200
	want := make([][]byte, frames)
	for i := range want {
		f := ipv4Frame(17, []byte{byte(i), byte(i >> 8), 0x5a, 0xa5})
		h := vhost.NetHeader{}
		if i%5 == 4 {
			h = partial(f, 17)
		}
		if err := r.g.Transmit(0, h, f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		want[i] = f
	}
	// The NIC does not run yet: its ring (128 descriptors) fills.
	for range 8 {
		r.channel.Poll()
	}
	if st := r.channel.Stats(); st.TxPackets == 0 || st.TxPackets >= frames {
		t.Fatalf("channel submitted %d of %d frames to a NIC that sends nothing: want its ring to take only part", st.TxPackets, frames)
	}
	for i, f := range r.collectWire(t, frames) {
		if i%5 == 4 {
			l4 := checkWireIPv4(t, f, 17)
			if !bytes.Equal(l4[8:], want[i][42:]) {
				t.Fatalf("frame %d: payload %x, want %x", i, l4[8:], want[i][42:])
			}
			continue
		}
		// Padded to the 60-byte minimum by the NIC.
		if len(f) != max(60, len(want[i])) || !bytes.Equal(f[:len(want[i])], want[i]) {
			t.Fatalf("frame %d on the wire is %x, want %x", i, f, want[i])
		}
	}
	st := r.channel.Stats()
	if st.TxPackets != frames || st.TxZeroCopy != frames || st.Drops != (Drops{}) {
		t.Fatalf("channel stats %+v: want %d frames sent zero-copy, none dropped", st, frames)
	}
	if n := r.g.ReclaimTx(0); n != frames {
		t.Fatalf("guest got %d TX buffers back, want %d", n, frames)
	}
}
