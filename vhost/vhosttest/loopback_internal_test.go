package vhosttest

import (
	"testing"

	"github.com/zcnet/zcnet/vhost"
)

// headerPassesAsIs decides when the loopback copies the guest's header
// bytes instead of decoding and re-encoding them; a wrong yes would hand a
// guest flags it did not negotiate or a GSO frame it cannot take.
func TestHeaderPassesAsIs(t *testing.T) {
	for _, c := range []struct {
		flags, gso byte
		feat       uint64
		want       bool
	}{
		{0, vhost.NetHdrGSONone, 0, true},
		{0, vhost.NetHdrGSONone, vhost.NetFGuestCsum, true},
		{vhost.NetHdrFNeedsCsum, vhost.NetHdrGSONone, vhost.NetFGuestCsum, true},
		{vhost.NetHdrFDataValid, vhost.NetHdrGSONone, vhost.NetFGuestCsum, true},
		{vhost.NetHdrFNeedsCsum, vhost.NetHdrGSONone, 0, false}, // the device must finish the checksum
		{vhost.NetHdrFDataValid, vhost.NetHdrGSONone, 0, false}, // the flag must be cleared
		{vhost.NetHdrFNeedsCsum, vhost.NetHdrGSOTCPv4, vhost.NetFGuestCsum | vhost.NetFGuestTSO4, false},
		{0, vhost.NetHdrGSOUDP, vhost.NetFGuestCsum, false},
	} {
		b := []byte{c.flags, c.gso, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if got := headerPassesAsIs(b, c.feat); got != c.want {
			t.Errorf("flags %#x gso %#x features %#x: passes as is = %v, want %v", c.flags, c.gso, c.feat, got, c.want)
		}
	}
	if headerPassesAsIs([]byte{0}, 0) {
		t.Error("a one-byte first segment cannot hold the header")
	}
}

func TestChecksumAcrossSegments(t *testing.T) {
	data := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	// RFC 1071 example header: checksum 0xb861.
	for split := 0; split <= len(data); split++ {
		segs := []vhost.Segment{{Buf: data[:split]}, {Buf: data[split:]}}
		if got := ^sumSegments(segs, 0, len(data)); got != 0xb861 {
			t.Fatalf("split %d: checksum %#x, want 0xb861", split, got)
		}
	} // Three pieces, the middle one of any length, odd or even, so that a
	// segment may both start and end at an odd offset.
	for i := 0; i <= len(data); i++ {
		for j := i; j <= len(data); j++ {
			segs := []vhost.Segment{{Buf: data[:i]}, {Buf: data[i:j]}, {Buf: data[j:]}}
			if got := ^sumSegments(segs, 0, len(data)); got != 0xb861 {
				t.Fatalf("split %d/%d: checksum %#x, want 0xb861", i, j, got)
			}
		}
	}
}
