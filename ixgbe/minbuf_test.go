package ixgbe

import (
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// TestRxMinBufLen: a queue programmed for 2 KiB buffers takes a buffer as
// short as the longest frame the port accepts (a Linux guest's 1518-byte
// buffer) and no shorter; with jumbo frames the longest frame is longer
// than the buffer size, which rules.
func TestRxMinBufLen(t *testing.T) {
	for _, c := range []struct {
		mtu, bufSize, want int
	}{
		{1500, 2048, 1518},
		{1400, 2048, 1518}, // without jumbo frames the MAC takes 1518 bytes whatever MAXFRS says
		{1500, 1024, 1024},
		{9000, 2048, 2048},
		{9000, 10240, 9018},
	} {
		_, p, _ := simPort(t, Config{MTU: c.mtu})
		if got := p.MaxRxWrite(); got != max(c.mtu, 1500)+18 {
			t.Errorf("MTU %d: MaxRxWrite %d", c.mtu, got)
		}
		if err := p.StopRxQueue(0); err != nil {
			t.Fatal(err)
		}
		if err := p.StartRxQueue(0, c.bufSize); err != nil {
			t.Fatal(err)
		}
		q := p.RxQueue(0)
		if q.MinBufLen() != c.want || q.RxBufSize() != c.bufSize {
			t.Fatalf("MTU %d, %d-byte buffers: MinBufLen %d RxBufSize %d, want %d and %d", c.mtu, c.bufSize, q.MinBufLen(), q.RxBufSize(), c.want, c.bufSize)
		}
		bufs := []ring.Buf{{IOVA: 1 << 32, Len: uint32(c.want - 1)}, {IOVA: 1<<32 + 16384, Len: uint32(c.want)}}
		if n := q.Post(bufs[:1]); n != 0 {
			t.Fatalf("MTU %d: a %d-byte buffer was posted to a queue that may write %d", c.mtu, c.want-1, c.want)
		}
		if n := q.Post(bufs[1:]); n != 1 {
			t.Fatalf("MTU %d: a %d-byte buffer was refused", c.mtu, c.want)
		}
		if err := p.StopRxQueue(0); err != nil {
			t.Fatal(err)
		}
		if c, err := q.Drain(nil); err != nil || len(c) != 1 {
			t.Fatalf("Drain: %v %v", c, err)
		}
	}
}
