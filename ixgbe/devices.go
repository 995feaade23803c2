// Package ixgbe drives Intel's 82599 10 GbE controller through the vfio
// interfaces. Open takes the physical function (PF): bring-up, RX and TX
// queues on the ring contract, offloads, RSS, address filters, pools (VMDq
// steering, anti-spoofing, the NIC's internal switch), statistics and link.
// OpenVF takes an SR-IOV virtual function (VF) whose PF the host's driver
// keeps: the reset handshake and requests through the VF<->PF mailbox,
// its queues on the same ring contract, recovery from resets by the PF,
// statistics and link. zcnet's appliance serves one guest per VF.
package ixgbe

import (
	"fmt"

	"github.com/zcnet/zcnet/vfio"
)

// VendorIntel is Intel's PCI vendor ID.
const VendorIntel = 0x8086

// Family groups the controllers that share a register layout closely enough
// to matter to an operator deciding what zcnet can drive.
type Family string

const (
	Family82599 Family = "82599"
	FamilyX540  Family = "X540"
	FamilyX550  Family = "X550"
)

// Model describes one PCI device ID of the family.
type Model struct {
	DeviceID uint16
	Name     string
	Family   Family
	// VF is true for SR-IOV virtual functions (driven through the PF's
	// mailbox), false for physical functions.
	VF bool
	// Supported is true where zcnet's appliance drives the device: the
	// 82599 PFs through Open, the 82599 VF through OpenVF (Model.OpenVF;
	// one guest per VF). The other family members are recognised so
	// probe can say why not.
	Supported bool
}

// OpenVF reports whether OpenVF drives the device: the 82599 VF, not its
// Hyper-V form (whose reset goes through config space, not the mailbox)
// nor later families' VFs.
func (m Model) OpenVF() bool { return m.VF && m.Family == Family82599 && m.DeviceID == 0x10ED }

func (m Model) String() string {
	kind := "PF"
	if m.VF {
		kind = "VF"
	}
	return fmt.Sprintf("%s %s (%04x:%04x)", m.Name, kind, VendorIntel, m.DeviceID)
}

// Device IDs as listed in the Linux ixgbe/ixgbevf drivers (ixgbe_type.h).
var models = []Model{
	{0x10F7, "82599 KX4", Family82599, false, true},
	{0x1514, "82599 KX4 Mezzanine", Family82599, false, true},
	{0x1517, "82599 KR", Family82599, false, true},
	{0x10F8, "82599 Combo Backplane", Family82599, false, true},
	{0x10F9, "82599 CX4", Family82599, false, true},
	{0x10FB, "82599ES SFP+", Family82599, false, true},
	{0x152A, "82599 Backplane FCoE", Family82599, false, true},
	{0x1529, "82599 SFP+ FCoE", Family82599, false, true},
	{0x1507, "82599 SFP+ EM", Family82599, false, true},
	{0x154D, "82599 SFP+ SF2", Family82599, false, true},
	{0x154A, "82599 SFP+ SF QP", Family82599, false, true},
	{0x1558, "82599 QSFP+ SF QP", Family82599, false, true},
	{0x1557, "82599EN SFP+", Family82599, false, true},
	{0x10FC, "82599 XAUI LOM", Family82599, false, true},
	{0x151C, "82599 T3 LOM", Family82599, false, true},
	{0x154F, "82599 LS", Family82599, false, true},
	{0x10ED, "82599 VF", Family82599, true, true},
	{0x152E, "82599 VF (Hyper-V)", Family82599, true, false},
	{0x1528, "X540-T", FamilyX540, false, false},
	{0x1560, "X540-T1", FamilyX540, false, false},
	{0x1515, "X540 VF", FamilyX540, true, false},
	{0x1530, "X540 VF (Hyper-V)", FamilyX540, true, false},
	{0x1563, "X550-T", FamilyX550, false, false},
	{0x15D1, "X550-T1", FamilyX550, false, false},
	{0x15AA, "X550EM_x KX4", FamilyX550, false, false},
	{0x15AB, "X550EM_x KR", FamilyX550, false, false},
	{0x15AC, "X550EM_x SFP+", FamilyX550, false, false},
	{0x15AD, "X550EM_x 10GBASE-T", FamilyX550, false, false},
	{0x15AE, "X550EM_x 1GBASE-T", FamilyX550, false, false},
	{0x15B0, "X550EM_x XFI", FamilyX550, false, false},
	{0x15C2, "X550EM_a KR", FamilyX550, false, false},
	{0x15C3, "X550EM_a KR L", FamilyX550, false, false},
	{0x15C4, "X550EM_a SFP+ N", FamilyX550, false, false},
	{0x15C6, "X550EM_a SGMII", FamilyX550, false, false},
	{0x15C7, "X550EM_a SGMII L", FamilyX550, false, false},
	{0x15C8, "X550EM_a 10GBASE-T", FamilyX550, false, false},
	{0x15CE, "X550EM_a SFP+", FamilyX550, false, false},
	{0x15E4, "X550EM_a 1GBASE-T", FamilyX550, false, false},
	{0x15E5, "X550EM_a 1GBASE-T L", FamilyX550, false, false},
	{0x1565, "X550 VF", FamilyX550, true, false},
	{0x1564, "X550 VF (Hyper-V)", FamilyX550, true, false},
	{0x15A8, "X550EM_x VF", FamilyX550, true, false},
	{0x15A9, "X550EM_x VF (Hyper-V)", FamilyX550, true, false},
	{0x15C5, "X550EM_a VF", FamilyX550, true, false},
	{0x15B4, "X550EM_a VF (Hyper-V)", FamilyX550, true, false},
}

// Lookup returns the model for a PCI vendor and device ID, and false when the
// device is not a member of the family.
func Lookup(vendor, device uint16) (Model, bool) {
	if vendor != VendorIntel {
		return Model{}, false
	}
	for _, m := range models {
		if m.DeviceID == device {
			return m, true
		}
	}
	return Model{}, false
}

// UnsupportedError is Open's refusal of a device this driver is not
// written for: another vendor's, another controller of the family, or an
// 82599 VF (whose BAR is not the PF's: the PF's reset sequence would
// write registers a VF does not have).
type UnsupportedError struct {
	Vendor, Device uint16
	// Model is the family member the ID belongs to (Known false: none).
	Model Model
	Known bool
	// WantVF is set when OpenVF refused the device.
	WantVF bool
}

func (e *UnsupportedError) Error() string {
	switch {
	case !e.Known:
		return fmt.Sprintf("ixgbe: %04x:%04x is not an 82599-family NIC", e.Vendor, e.Device)
	case e.WantVF && !e.Model.VF:
		return fmt.Sprintf("ixgbe: %s is a PF: open it with Open, not OpenVF", e.Model)
	case e.WantVF:
		return fmt.Sprintf("ixgbe: %s: OpenVF drives only the 82599 VF (8086:10ed)", e.Model)
	case e.Model.OpenVF():
		return fmt.Sprintf("ixgbe: %s: Open drives PFs; open a VF with OpenVF", e.Model)
	case e.Model.VF:
		return fmt.Sprintf("ixgbe: %s: of the VFs zcnet drives only the 82599's (8086:10ed, with OpenVF); give it the PF", e.Model)
	}
	return fmt.Sprintf("ixgbe: %s: zcnet drives only the 82599 PF", e.Model)
}

// checkModel reads the device's IDs from its configuration space and
// refuses any model Open (vf false) or OpenVF (vf true) is not written
// for.
func checkModel(cfg vfio.ConfigSpace, vf bool) error {
	vendor, err := cfg.Read16(vfio.PCIVendorID)
	if err != nil {
		return fmt.Errorf("read the vendor ID: %w", err)
	}
	device, err := cfg.Read16(vfio.PCIDeviceID)
	if err != nil {
		return fmt.Errorf("read the device ID: %w", err)
	}
	m, ok := Lookup(vendor, device)
	if !ok || (!vf && (m.VF || !m.Supported)) || (vf && !m.OpenVF()) {
		return &UnsupportedError{Vendor: vendor, Device: device, Model: m, Known: ok, WantVF: vf}
	}
	return nil
}
