package ixgbe

import (
	"errors"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/vfio"
)

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

// otherModel is a simulated 82599 whose configuration space reports
// another vendor and device ID, as a different card would.
type otherModel struct {
	*sim.PF
	vendor, device uint16
}

func (o otherModel) Config() vfio.ConfigSpace { return otherIDs{o.PF.Config(), o} }

type otherIDs struct {
	vfio.ConfigSpace
	m otherModel
}

func (c otherIDs) Read16(off int) (uint16, error) {
	switch off {
	case vfio.PCIVendorID:
		return c.m.vendor, nil
	case vfio.PCIDeviceID:
		return c.m.device, nil
	}
	return c.ConfigSpace.Read16(off)
}

// TestOpenRefusesOtherModels: Open reads the device ID first and refuses,
// with a typed error naming the model, anything but an 82599 PF, before
// it enables bus mastering or touches a register.
func TestOpenRefusesOtherModels(t *testing.T) {
	for _, c := range []struct {
		vendor, device uint16
		want           string
	}{
		{0x8086, 0x10ED, "open a VF with OpenVF"},
		{0x8086, 0x1515, "of the VFs zcnet drives only the 82599's"},
		{0x8086, 0x1528, "drives only the 82599 PF"},
		{0x8086, 0x10D3, "not an 82599-family NIC"},
	} {
		expectRefusal(t, "Open", func(d vfio.Device) error {
			_, err := Open(d, Config{LinkTimeout: -1})
			return err
		}, c.vendor, c.device, c.want)
	}
	// The real 82599 PF ID still opens.
	pf := sim.NewPF(sim.DefaultOptions())
	defer pf.Close()
	p, err := Open(otherModel{pf, 0x8086, 0x10FB}, Config{LinkTimeout: -1})
	if err != nil {
		t.Fatalf("Open on 8086:10fb: %v", err)
	}
	p.Close()
}

// TestOpenVFRefusesOtherModels: OpenVF refuses anything but the 82599 VF
// with a typed error, before it enables bus mastering.
func TestOpenVFRefusesOtherModels(t *testing.T) {
	for _, c := range []struct {
		vendor, device uint16
		want           string
	}{
		{0x8086, 0x10FB, "open it with Open, not OpenVF"},
		{0x8086, 0x1515, "OpenVF drives only the 82599 VF"},
		{0x8086, 0x152E, "OpenVF drives only the 82599 VF"},
		{0x8086, 0x10D3, "not an 82599-family NIC"},
	} {
		expectRefusal(t, "OpenVF", func(d vfio.Device) error {
			_, err := OpenVF(d, VFConfig{})
			return err
		}, c.vendor, c.device, c.want)
	}
}

// expectRefusal opens a simulated device reporting vendor:device with
// open and checks the refusal: an UnsupportedError saying want, before
// bus mastering is enabled.
func expectRefusal(t *testing.T, name string, open func(vfio.Device) error, vendor, device uint16, want string) {
	t.Helper()
	pf := sim.NewPF(sim.DefaultOptions())
	defer pf.Close()
	err := open(otherModel{pf, vendor, device})
	var ue *UnsupportedError
	if !errors.As(err, &ue) || ue.Device != device || !strings.Contains(err.Error(), want) {
		t.Errorf("%s on %04x:%04x: %v; want an UnsupportedError saying %q", name, vendor, device, err, want)
	}
	if cmd, err := pf.Config().Read16(vfio.PCICommand); err != nil || cmd&vfio.PCICommandMaster != 0 {
		t.Errorf("%s on %04x:%04x enabled bus mastering before refusing (command %#x, %v)", name, vendor, device, cmd, err)
	}
}
