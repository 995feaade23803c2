package guest_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// backend is a vhost device served on a socket in server mode.
type backend struct {
	dev  *vhost.Device
	loop *vhosttest.Loopback
	path string
}

func logger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

func startBackend(t *testing.T, cfg vhost.Config) *backend {
	t.Helper()
	s := vhosttest.Serve(t, cfg)
	return &backend{dev: s.Dev, loop: vhosttest.NewLoopback(s.Dev), path: s.Path}
}

func dial(t *testing.T, b *backend, opt guest.Options) *guest.Guest {
	t.Helper()
	g, err := guest.Dial(b.path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// frame builds an Ethernet frame of n bytes (n >= 14) whose payload
// encodes seq, so a reordering or mix-up shows.
func frame(seq, n int) []byte {
	f := make([]byte, n)
	copy(f[0:6], []byte{0x52, 0x54, 0, 0, 0, 0x01})
	copy(f[6:12], []byte{0x52, 0x54, 0, 0, 0, 0x02})
	f[12], f[13] = 0x88, 0xb5 // local experimental ethertype
	for i := 14; i < n; i++ {
		f[i] = byte(seq*7 + i)
	}
	return f
}

func swapMACs(f []byte) []byte {
	s := append([]byte(nil), f...)
	copy(s[0:6], f[6:12])
	copy(s[6:12], f[0:6])
	return s
}

// roundTrip transmits frames on pair and expects them back MAC-swapped.
func roundTrip(t *testing.T, b *backend, g *guest.Guest, pair int, sizes []int) {
	t.Helper()
	var sent [][]byte
	var got []guest.Packet
	for seq, n := range sizes {
		f := frame(seq, n)
		for try := 0; ; try++ {
			err := g.Transmit(pair, vhost.NetHeader{}, f)
			if err == nil {
				break
			}
			if !errors.Is(err, guest.ErrRingFull) || try == 100 {
				t.Fatalf("transmit frame %d: %v", seq, err)
			}
			pump(t, b, g, pair, &got)
		}
		sent = append(sent, f)
		if seq%16 == 15 { // keep the TX ring from filling
			pump(t, b, g, pair, &got)
		}
	}
	for range 100 {
		if len(got) >= len(sent) {
			break
		}
		pump(t, b, g, pair, &got)
	}
	if len(got) != len(sent) {
		t.Fatalf("pair %d: got %d frames back, sent %d (loopback counters %+v)", pair, len(got), len(sent), b.loop.Counters())
	}
	for i := range sent {
		want := swapMACs(sent[i])
		if !bytes.Equal(got[i].Frame, want) {
			t.Fatalf("pair %d frame %d (%d bytes): came back as %d bytes, differs: %s", pair, i, len(sent[i]), len(got[i].Frame), diff(want, got[i].Frame))
		}
	}
}

func pump(t *testing.T, b *backend, g *guest.Guest, pair int, got *[]guest.Packet) {
	t.Helper()
	b.loop.Poll()
	pk, err := g.Receive(pair)
	if err != nil {
		t.Fatal(err)
	}
	*got = append(*got, pk...)
	if len(pk) > 0 {
		if err := g.PostRx(pair, len(pk)*maxBufsPerPacket(g)); err != nil && !errors.Is(err, guest.ErrRingFull) {
			t.Fatal(err)
		}
	}
	g.ReclaimTx(pair)
}

func maxBufsPerPacket(g *guest.Guest) int {
	if g.Features&vhost.NetFMrgRxbuf != 0 {
		return 8
	}
	return 1
}

func diff(want, got []byte) string {
	for i := range min(len(want), len(got)) {
		if want[i] != got[i] {
			return fmt.Sprintf("first difference at byte %d: want %#02x got %#02x", i, want[i], got[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d", len(want), len(got))
}

func sizes(n int, sizes ...int) []int {
	var out []int
	for i := range n {
		out = append(out, sizes[i%len(sizes)])
	}
	return out
}
