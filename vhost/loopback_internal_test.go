package vhost

import "testing"

// headerPassesAsIs decides when the loopback copies the guest's header
// bytes instead of decoding and re-encoding them; a wrong yes would hand a
// guest flags it did not negotiate or a GSO frame it cannot take.
func TestHeaderPassesAsIs(t *testing.T) {
	for _, c := range []struct {
		flags, gso byte
		feat       uint64
		want       bool
	}{
		{0, NetHdrGSONone, 0, true},
		{0, NetHdrGSONone, NetFGuestCsum, true},
		{NetHdrFNeedsCsum, NetHdrGSONone, NetFGuestCsum, true},
		{NetHdrFDataValid, NetHdrGSONone, NetFGuestCsum, true},
		{NetHdrFNeedsCsum, NetHdrGSONone, 0, false}, // the device must finish the checksum
		{NetHdrFDataValid, NetHdrGSONone, 0, false}, // the flag must be cleared
		{NetHdrFNeedsCsum, NetHdrGSOTCPv4, NetFGuestCsum | NetFGuestTSO4, false},
		{0, NetHdrGSOUDP, NetFGuestCsum, false},
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
