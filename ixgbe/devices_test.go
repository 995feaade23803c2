package ixgbe

import "testing"

func TestLookup(t *testing.T) {
	cases := []struct {
		vendor, device uint16
		want           bool
		vf, supported  bool
		family         Family
	}{
		{0x8086, 0x10FB, true, false, true, Family82599},
		{0x8086, 0x10ED, true, true, true, Family82599},
		{0x8086, 0x1528, true, false, false, FamilyX540},
		{0x8086, 0x15C5, true, true, false, FamilyX550},
		{0x8086, 0x10D3, false, false, false, ""}, // e1000e
		{0x1af4, 0x10FB, false, false, false, ""}, // right device ID, wrong vendor
	}
	for _, c := range cases {
		m, ok := Lookup(c.vendor, c.device)
		if ok != c.want {
			t.Errorf("Lookup(%04x:%04x) found=%v, want %v", c.vendor, c.device, ok, c.want)
			continue
		}
		if ok && (m.VF != c.vf || m.Supported != c.supported || m.Family != c.family) {
			t.Errorf("Lookup(%04x:%04x) = %+v, want vf=%v supported=%v family=%s", c.vendor, c.device, m, c.vf, c.supported, c.family)
		}
	}
}

func TestModelIDsUnique(t *testing.T) {
	seen := map[uint16]string{}
	for _, m := range models {
		if prev, dup := seen[m.DeviceID]; dup {
			t.Errorf("device ID %04x listed twice: %s and %s", m.DeviceID, prev, m.Name)
		}
		seen[m.DeviceID] = m.Name
	}
}
