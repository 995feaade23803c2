package engine

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// transmit sends frames from the guest and runs until the wire saw them
// all; it returns what the wire got.
func (r *rig) transmit(t testing.TB, frames [][]byte) [][]byte {
	t.Helper()
	var got [][]byte
	for _, f := range frames {
		for {
			err := r.g.Transmit(0, vhost.NetHeader{}, f)
			if err == nil {
				break
			}
			r.step() // ring full: let the channel return buffers
			r.g.ReclaimTx(0)
		}
	}
	for i := 0; i < 20000 && len(got) < len(frames); i++ {
		r.step()
		got = append(got, r.wire.take()...)
	}
	if len(got) != len(frames) {
		t.Fatalf("wire got %d frames, want %d (stats %+v)", len(got), len(frames), r.channel.Stats())
	}
	return got
}

func testFrames(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		f := make([]byte, size)
		copy(f, []byte{0x02, 0, 0, 0, 0, 0x09, 0x02, 0, 0, 0, 0, 0x08, 0x88, 0xb5})
		for k := 14; k < size; k++ {
			f[k] = byte(i*13 + k)
		}
		out[i] = f
	}
	return out
}

func sameFrames(t testing.TB, got, want [][]byte) {
	t.Helper()
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d differs:\n got %x\nwant %x", i, got[i], want[i])
		}
	}
}

func TestTxZeroCopy(t *testing.T) {
	for _, c := range []struct {
		name string
		opt  guest.Options
	}{
		{name: "one-desc"},
		{name: "split", opt: guest.Options{TxSplit: true}},
		{name: "indirect", opt: guest.Options{TxSplit: true, TxIndirect: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{guest: c.opt, channel: ChannelConfig{TxCompleteBatch: 8}})
			want := testFrames(300, 700) // more than the 256-entry guest ring
			sameFrames(t, r.transmit(t, want), want)
			// Guest buffers come back only after the NIC sent them.
			for i := 0; i < 100; i++ {
				r.step()
			}
			if n := r.g.ReclaimTx(0); n == 0 {
				t.Fatal("guest got no TX buffer back")
			}
			st := r.channel.Stats()
			if st.TxZeroCopy != 300 || st.TxCopied != 0 || st.TxPackets != 300 || st.TxSignals == 0 {
				t.Fatalf("want 300 frames sent zero-copy: %+v", st)
			}
		})
	}
}

func TestCopyFallback(t *testing.T) {
	for _, c := range []struct {
		name    string
		channel ChannelConfig
		opt     guest.Options
		reason  func(CopyReasons) uint64
	}{
		{name: "forced", channel: ChannelConfig{ForceCopy: true}, reason: func(c CopyReasons) uint64 { return c.Forced }},
		// 1 KiB guest buffers cannot hold the header plus a 1 KiB NIC buffer.
		{name: "small-buffers", opt: guest.Options{RxBufSize: 1024}, reason: func(c CopyReasons) uint64 { return c.SmallBuffer }},
		// Without MRG_RXBUF a frame must fit one guest buffer: 1280
		// bytes cannot take a 1514-byte frame.
		{name: "no-mrg-rxbuf", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 1280},
			reason: func(c CopyReasons) uint64 { return c.Features }},
		{name: "chained-rx-buffers", opt: guest.Options{RxBufSize: 4096, RxChainDescs: 4},
			reason: func(c CopyReasons) uint64 { return c.Layout }},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{guest: c.opt, channel: c.channel, frame: 1000})
			r.postRx(t, 32)
			r.gen.Emit(64)
			got := r.receive(t, 64)
			checkIntact(t, got, r.input.take())
			st := r.channel.Stats()
			if st.RxCopied != 64 || st.RxZeroCopy != 0 || c.reason(st.Copy) < 64 {
				t.Fatalf("want 64 frames copied for the reason: %+v", st)
			}
			if c.channel.ForceCopy {
				want := testFrames(50, 1500)
				sameFrames(t, r.transmit(t, want), want)
				if st := r.channel.Stats(); st.TxCopied != 50 || st.TxZeroCopy != 0 {
					t.Fatalf("want 50 frames sent by copy: %+v", st)
				}
			}
		})
	}
}

func TestGuestReconnectMidTraffic(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
	r.postRx(t, 64)
	r.gen.Emit(16)
	checkIntact(t, r.receive(t, 16), r.input.take())
	// Frames in flight, guest buffers on the NIC: the guest goes away.
	r.gen.Emit(8)
	r.pf.Step()
	if err := r.g.Disconnect(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200 && r.dma.Mapped() != 0; i++ {
		r.step()
		waitBriefly()
	}
	if r.dma.Mapped() != 0 {
		t.Fatal("guest memory still mapped after disconnect")
	}
	r.step()
	r.input.take()
	// It comes back, resuming its rings: traffic flows again.
	uc, err := dialUnix(r.path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.g.Attach(uc); err != nil {
		t.Fatal(err)
	}
	r.g.Receive(0) // frames delivered before the disconnect, if any
	r.postRx(t, 16)
	r.gen.Emit(16)
	checkIntact(t, r.receive(t, 16), r.input.take())
	want := testFrames(20, 300)
	sameFrames(t, r.transmit(t, want), want)
	if st := r.channel.Stats(); st.Restarts == 0 {
		t.Fatalf("channel never restarted: %+v", st)
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults", c.IOMMUFaults)
	}
}
