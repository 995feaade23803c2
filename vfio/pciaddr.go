package vfio

import (
	"fmt"
	"strconv"
	"strings"
)

// PCIAddress is a PCI function address: domain:bus:device.function.
type PCIAddress struct {
	Domain   uint16
	Bus      uint8
	Device   uint8 // 0-31
	Function uint8 // 0-7
}

func (a PCIAddress) String() string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", a.Domain, a.Bus, a.Device, a.Function)
}

// ParseAddress accepts the forms lspci and sysfs use: "0000:01:00.0" and,
// meaning domain 0, "01:00.0". Hex digits may be either case.
func ParseAddress(s string) (PCIAddress, error) {
	bad := func(why string) (PCIAddress, error) {
		return PCIAddress{}, fmt.Errorf("%w %q: %s (want DDDD:BB:DD.F, e.g. 0000:01:00.0)", ErrInvalidAddress, s, why)
	}
	parts := strings.Split(s, ":")
	var domain, bus, devfn string
	switch len(parts) {
	case 2:
		domain, bus, devfn = "0", parts[0], parts[1]
	case 3:
		domain, bus, devfn = parts[0], parts[1], parts[2]
	default:
		return bad("wrong number of ':'")
	}
	dev, fn, ok := strings.Cut(devfn, ".")
	if !ok {
		return bad("no '.' before the function number")
	}
	field := func(text string, maxDigits, bits int, name string) (uint64, error) {
		if text == "" || len(text) > maxDigits {
			return 0, fmt.Errorf("%s %q has %d hex digits, want 1 to %d", name, text, len(text), maxDigits)
		}
		v, err := strconv.ParseUint(text, 16, bits)
		if err != nil {
			return 0, fmt.Errorf("%s %q is not a hex number in range", name, text)
		}
		return v, nil
	}
	d, err := field(domain, 4, 16, "domain")
	if err != nil {
		return bad(err.Error())
	}
	b, err := field(bus, 2, 8, "bus")
	if err != nil {
		return bad(err.Error())
	}
	dv, err := field(dev, 2, 5, "device")
	if err != nil {
		return bad(err.Error())
	}
	f, err := field(fn, 1, 3, "function")
	if err != nil {
		return bad(err.Error())
	}
	return PCIAddress{uint16(d), uint8(b), uint8(dv), uint8(f)}, nil
}

// NormalizeAddress returns addr in the canonical sysfs form
// "0000:01:00.0", or an error saying what is wrong with it.
func NormalizeAddress(addr string) (string, error) {
	a, err := ParseAddress(addr)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}
