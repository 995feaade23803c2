package vfio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// SysfsWrite is one write a bind or unbind performs: the value written to a
// sysfs attribute. A dry run returns the list without writing anything.
type SysfsWrite struct {
	Path  string
	Value string
}

func (w SysfsWrite) String() string {
	return fmt.Sprintf("echo %q > %s", strings.TrimSuffix(w.Value, "\n"), w.Path)
}

// Binder moves PCI functions between kernel drivers through sysfs, the way
// dpdk-devbind.py and driverctl do: driver_override pins the function to a
// driver, unbind releases it from its current one, drivers_probe lets the
// kernel attach the driver the override names.
type Binder struct {
	// SysfsRoot is normally "/sys"; tests point it at a fake tree.
	SysfsRoot string
	// DryRun makes Bind and Unbind return the writes they would do without
	// doing them.
	DryRun bool
}

func (b *Binder) root() string {
	if b.SysfsRoot == "" {
		return "/sys"
	}
	return b.SysfsRoot
}

func (b *Binder) devPath(addr string) string {
	return filepath.Join(b.root(), "bus", "pci", "devices", addr)
}

// CurrentDriver returns the name of the driver bound to the function at addr,
// or "" when none is.
func (b *Binder) CurrentDriver(addr string) (string, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return "", err
	}
	return b.currentDriver(addr)
}

func (b *Binder) currentDriver(addr string) (string, error) {
	dev := b.devPath(addr)
	if _, err := os.Stat(dev); err != nil {
		return "", fmt.Errorf("PCI device %s not found under %s: check the address with `lspci -D` or `zcnet probe`", addr, filepath.Dir(dev))
	}
	target, err := os.Readlink(filepath.Join(dev, "driver"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read driver of %s: %w", addr, err)
	}
	return filepath.Base(target), nil
}

// Bind hands the function at addr to driver (normally "vfio-pci"). It is a
// no-op when the function is already bound to it.
func (b *Binder) Bind(addr, driver string) ([]SysfsWrite, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return nil, err
	}
	if driver == "" {
		driver = "vfio-pci"
	}
	cur, err := b.currentDriver(addr)
	if err != nil {
		return nil, err
	}
	if cur == driver {
		return nil, nil
	}
	if _, err := os.Stat(filepath.Join(b.root(), "bus", "pci", "drivers", driver)); err != nil {
		return nil, fmt.Errorf("driver %s is not loaded: run `modprobe %s` first", driver, driver)
	}
	dev := b.devPath(addr)
	var writes []SysfsWrite
	if cur != "" {
		writes = append(writes, SysfsWrite{filepath.Join(dev, "driver", "unbind"), addr})
	}
	writes = append(writes,
		SysfsWrite{filepath.Join(dev, "driver_override"), driver},
		SysfsWrite{filepath.Join(b.root(), "bus", "pci", "drivers_probe"), addr},
	)
	return writes, b.apply(addr, writes)
}

// Unbind releases the function at addr from its driver and clears any
// driver_override, then asks the kernel to probe it again so that its
// ordinary driver (ixgbe, ixgbevf) takes it back.
func (b *Binder) Unbind(addr string) ([]SysfsWrite, error) {
	addr, err := NormalizeAddress(addr)
	if err != nil {
		return nil, err
	}
	cur, err := b.currentDriver(addr)
	if err != nil {
		return nil, err
	}
	dev := b.devPath(addr)
	var writes []SysfsWrite
	if cur != "" {
		writes = append(writes, SysfsWrite{filepath.Join(dev, "driver", "unbind"), addr})
	}
	// Writing a newline clears driver_override (an empty write is refused).
	writes = append(writes,
		SysfsWrite{filepath.Join(dev, "driver_override"), "\n"},
		SysfsWrite{filepath.Join(b.root(), "bus", "pci", "drivers_probe"), addr},
	)
	return writes, b.apply(addr, writes)
}

func (b *Binder) apply(addr string, writes []SysfsWrite) error {
	if b.DryRun {
		return nil
	}
	for _, w := range writes {
		if err := writeSysfs(w.Path, w.Value); err != nil {
			return fmt.Errorf("bind %s: %w", addr, err)
		}
	}
	return nil
}

// writeSysfs writes value to an existing sysfs attribute, opened the way
// `echo > attr` opens it (O_TRUNC is accepted by sysfs). O_CREATE is
// deliberately absent: a missing attribute means a wrong path, not a file to
// create.
func writeSysfs(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("open %s: %w (run as root)", path, err)
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(value), path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(value), path, cerr)
	}
	return nil
}
