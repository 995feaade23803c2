package engine

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
)

// TestZeroCopySkipsShortLoneBuffer: among a guest's receive buffers of one
// writable descriptor each (the chains vhost.PopWritable hands the channel
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
