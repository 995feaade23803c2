package vfio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysfs builds the part of /sys/bus/pci a bind touches: a device
// directory with driver_override, an optional driver symlink, the drivers
// directory and drivers_probe. Writes land in plain files the test reads back.
func fakeSysfs(t *testing.T, addr, boundTo string, loaded ...string) string {
	t.Helper()
	root := t.TempDir()
	pci := filepath.Join(root, "bus", "pci")
	dev := filepath.Join(pci, "devices", addr)
	mustMkdir(t, dev)
	mustWrite(t, filepath.Join(dev, "driver_override"), "(null)\n")
	mustWrite(t, filepath.Join(pci, "drivers_probe"), "")
	for _, d := range loaded {
		mustMkdir(t, filepath.Join(pci, "drivers", d))
		mustWrite(t, filepath.Join(pci, "drivers", d, "unbind"), "")
	}
	if boundTo != "" {
		if err := os.Symlink(filepath.Join(pci, "drivers", boundTo), filepath.Join(dev, "driver")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBindFromKernelDriver(t *testing.T) {
	const addr = "0000:03:00.0"
	root := fakeSysfs(t, addr, "ixgbe", "ixgbe", "vfio-pci")
	b := &Binder{SysfsRoot: root}
	if d, err := b.CurrentDriver("03:00.0"); err != nil || d != "ixgbe" {
		t.Fatalf("CurrentDriver = %q, %v; want ixgbe", d, err)
	}
	writes, err := b.Bind("03:00.0", "vfio-pci")
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) != 3 {
		t.Fatalf("got %d writes, want unbind, driver_override, drivers_probe: %v", len(writes), writes)
	}
	pci := filepath.Join(root, "bus", "pci")
	if got := readFile(t, filepath.Join(pci, "drivers", "ixgbe", "unbind")); got != addr {
		t.Errorf("unbind got %q, want %q", got, addr)
	}
	if got := readFile(t, filepath.Join(pci, "devices", addr, "driver_override")); got != "vfio-pci" {
		t.Errorf("driver_override = %q, want vfio-pci", got)
	}
	if got := readFile(t, filepath.Join(pci, "drivers_probe")); got != addr {
		t.Errorf("drivers_probe got %q, want %q", got, addr)
	}
}

func TestBindDryRunWritesNothing(t *testing.T) {
	const addr = "0000:03:00.1"
	root := fakeSysfs(t, addr, "ixgbe", "ixgbe", "vfio-pci")
	b := &Binder{SysfsRoot: root, DryRun: true}
	writes, err := b.Bind(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) != 3 || !strings.Contains(writes[1].String(), `echo "vfio-pci" >`) {
		t.Fatalf("dry-run plan = %v", writes)
	}
	if got := readFile(t, filepath.Join(root, "bus", "pci", "devices", addr, "driver_override")); got != "(null)\n" {
		t.Errorf("dry run changed driver_override to %q", got)
	}
}

func TestBindAlreadyBoundIsNoop(t *testing.T) {
	const addr = "0000:03:00.0"
	root := fakeSysfs(t, addr, "vfio-pci", "vfio-pci")
	writes, err := (&Binder{SysfsRoot: root}).Bind(addr, "vfio-pci")
	if err != nil || len(writes) != 0 {
		t.Fatalf("Bind on a bound device = %v, %v; want no writes", writes, err)
	}
}

func TestBindErrors(t *testing.T) {
	const addr = "0000:03:00.0"
	root := fakeSysfs(t, addr, "", "ixgbe") // vfio-pci not loaded
	b := &Binder{SysfsRoot: root}
	if _, err := b.Bind(addr, "vfio-pci"); err == nil || !strings.Contains(err.Error(), "modprobe vfio-pci") {
		t.Errorf("missing driver: err = %v, want advice to modprobe", err)
	}
	if _, err := b.Bind("0000:04:00.0", "vfio-pci"); err == nil || !strings.Contains(err.Error(), "lspci") {
		t.Errorf("missing device: err = %v, want advice to list devices", err)
	}
	if _, err := b.Bind("nonsense", "vfio-pci"); err == nil || !strings.Contains(err.Error(), "invalid PCI address") {
		t.Errorf("bad address: err = %v", err)
	}
	// An attribute the kernel would have but this tree lacks: the write fails
	// with the path in the message instead of creating a file.
	if err := os.Remove(filepath.Join(root, "bus", "pci", "drivers_probe")); err != nil {
		t.Fatal(err)
	}
	mustMkdir(t, filepath.Join(root, "bus", "pci", "drivers", "vfio-pci"))
	if _, err := b.Bind(addr, "vfio-pci"); err == nil || !strings.Contains(err.Error(), "drivers_probe") {
		t.Errorf("missing drivers_probe: err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "bus", "pci", "drivers_probe")); err == nil {
		t.Error("a failed bind created drivers_probe")
	}
}

func TestUnbindClearsOverride(t *testing.T) {
	const addr = "0000:03:00.0"
	root := fakeSysfs(t, addr, "vfio-pci", "vfio-pci", "ixgbe")
	pci := filepath.Join(root, "bus", "pci")
	mustWrite(t, filepath.Join(pci, "devices", addr, "driver_override"), "vfio-pci\n")
	writes, err := (&Binder{SysfsRoot: root}).Unbind(addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) != 3 {
		t.Fatalf("writes = %v", writes)
	}
	if got := readFile(t, filepath.Join(pci, "drivers", "vfio-pci", "unbind")); got != addr {
		t.Errorf("unbind got %q", got)
	}
	if got := readFile(t, filepath.Join(pci, "devices", addr, "driver_override")); got != "\n" {
		t.Errorf("driver_override = %q, want cleared with a newline", got)
	}
}
