package vfio

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A plain file stands in for the device fd: pread, pwrite and mmap at a
// region's offset behave on it as on a vfio-pci device fd, so everything
// but the ioctls can be checked without VFIO.
const (
	fileBAR0Off   = 0
	fileBAR0Size  = 128 << 10
	fileBAR2Off   = 0x40000
	fileConfigOff = 0x50000
	fileConfigLen = 256
)

func newFileDevice(t *testing.T, devFlags uint32, irqCounts ...int) (*PCIDevice, *os.File) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "device"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(fileConfigOff + fileConfigLen); err != nil {
		t.Fatal(err)
	}
	// Config space: Intel 82574 (what QEMU's e1000e models), command 0.
	cfg := make([]byte, fileConfigLen)
	binary.LittleEndian.PutUint16(cfg[PCIVendorID:], 0x8086)
	binary.LittleEndian.PutUint16(cfg[PCIDeviceID:], 0x10d3)
	if _, err := f.WriteAt(cfg, fileConfigOff); err != nil {
		t.Fatal(err)
	}
	rw := uint32(regionFlagRead | regionFlagWrite)
	regions := make([]RegionInfo, 9)
	for i := range regions {
		regions[i].Index = i
	}
	regions[0] = RegionInfo{Index: 0, Flags: rw | regionFlagMmap, Size: fileBAR0Size, Offset: fileBAR0Off}
	regions[2] = RegionInfo{Index: 2, Flags: rw, Size: 32, Offset: fileBAR2Off}
	regions[RegionROM] = RegionInfo{Index: RegionROM, Flags: regionFlagRead, Size: 4096, Offset: 0x60000}
	regions[RegionConfig] = RegionInfo{Index: RegionConfig, Flags: rw, Size: fileConfigLen, Offset: fileConfigOff}
	irqs := make([]IRQInfo, len(irqCounts))
	for i, n := range irqCounts {
		irqs[i] = IRQInfo{Kind: IRQKind(i), Flags: irqInfoEventfd, Count: n}
	}
	info := DeviceInfo{Flags: devFlags | deviceFlagsPCI, NumRegions: len(regions), NumIRQs: len(irqs)}
	d, err := assemblePCIDevice(PCIAddress{Bus: 1}, f, &Container{}, info, regions, irqs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, f
}

func TestConfigSpaceOverPread(t *testing.T) {
	d, f := newFileDevice(t, 0)
	cfg := d.Config()
	if v, err := cfg.Read16(PCIVendorID); err != nil || v != 0x8086 {
		t.Errorf("vendor = %#x, %v", v, err)
	}
	if v, err := cfg.Read32(PCIVendorID); err != nil || v != 0x10d38086 {
		t.Errorf("vendor/device dword = %#x, %v", v, err)
	}
	if v, err := cfg.Read8(PCIDeviceID + 1); err != nil || v != 0x10 {
		t.Errorf("device ID high byte = %#x, %v", v, err)
	}
	if err := EnableBusMaster(cfg); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 2)
	if _, err := f.ReadAt(raw, fileConfigOff+PCICommand); err != nil {
		t.Fatal(err)
	}
	want := uint16(PCICommandMemory | PCICommandMaster | PCICommandIntxOff)
	if got := binary.LittleEndian.Uint16(raw); got != want {
		t.Errorf("command register in the device file = %#x, want %#x (little-endian at offset 4)", got, want)
	}
	if err := cfg.Write32(PCIBAR0, 0xfebc0000); err != nil {
		t.Fatal(err)
	}
	if v, _ := cfg.Read32(PCIBAR0); v != 0xfebc0000 {
		t.Errorf("BAR0 read back %#x", v)
	}
	// Unaligned and out-of-range accesses are refused before any syscall.
	for _, bad := range []func() error{
		func() error { _, err := cfg.Read16(1); return err },
		func() error { _, err := cfg.Read32(2); return err },
		func() error { _, err := cfg.Read32(fileConfigLen); return err },
		func() error { _, err := cfg.Read8(-1); return err },
		func() error { return cfg.Write16(fileConfigLen-1, 0) },
	} {
		wantErr(t, bad(), nil, "unaligned or outside")
	}
}

func TestBARMmapRegisterAccess(t *testing.T) {
	d, f := newFileDevice(t, 0)
	// STATUS of an e1000e at 0x8, written "by the device" through the file.
	var word [4]byte
	binary.LittleEndian.PutUint32(word[:], 0x80080783)
	if _, err := f.WriteAt(word[:], fileBAR0Off+0x8); err != nil {
		t.Fatal(err)
	}
	bar, err := d.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	if bar.Len() != fileBAR0Size {
		t.Errorf("Len = %d, want %d", bar.Len(), fileBAR0Size)
	}
	if got := bar.Read32(0x8); got != 0x80080783 {
		t.Errorf("Read32(0x8) = %#x, want the value written through the fd", got)
	}
	// A store through the mapping is what pread of the region sees.
	bar.Write32(0x2800, 0x12345680)
	var back [4]byte
	if err := d.ReadRegion(RegionBAR0, back[:], 0x2800); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(back[:]); got != 0x12345680 {
		t.Errorf("pread after Write32 = %#x", got)
	}
	// The last register of the BAR is reachable, the next is not.
	bar.Write32(fileBAR0Size-4, 1)
	if bar.Read32(fileBAR0Size-4) != 1 {
		t.Error("last register did not read back")
	}
	mustPanic(t, "past the end", func() { bar.Read32(fileBAR0Size) })
	mustPanic(t, "unaligned", func() { bar.Write32(0x2, 0) })

	// BAR turned memory decoding on, since an access with it off is a SIGBUS.
	if cmd, _ := d.Config().Read16(PCICommand); cmd&PCICommandMemory == 0 {
		t.Errorf("command register %#x: BAR did not enable memory decoding", cmd)
	}
	if again, _ := d.BAR(0); again != bar {
		t.Error("second BAR(0) made a new mapping")
	}
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if r := recover(); r == nil {
			t.Errorf("%s: no panic", what)
		} else if !strings.Contains(r.(string), "outside") {
			t.Errorf("%s: panic %v does not explain itself", what, r)
		}
	}()
	f()
}

func TestBARErrors(t *testing.T) {
	d, _ := newFileDevice(t, 0)
	_, err := d.BAR(1)
	wantErr(t, err, ErrNotSupported, "does not implement BAR 1")
	_, err = d.BAR(2)
	wantErr(t, err, ErrNotSupported, "cannot be mmap'd", "ReadRegion")
	_, err = d.BAR(6)
	wantErr(t, err, nil, "out of range")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = d.BAR(0)
	wantErr(t, err, nil, "closed")
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRegionAccessBounds(t *testing.T) {
	d, _ := newFileDevice(t, 0)
	buf := make([]byte, 4)
	wantErr(t, d.ReadRegion(2, buf, 30), nil, "outside its 0x20 bytes")
	if err := d.ReadRegion(2, buf, 28); err != nil {
		t.Errorf("last dword of BAR 2: %v", err)
	}
	wantErr(t, d.WriteRegion(RegionROM, buf, 0), ErrNotSupported, "does not allow write")
	wantErr(t, d.ReadRegion(9, buf, 0), nil, "no region 9")
	if r, err := d.Region(RegionConfig); err != nil || r.Size != fileConfigLen || !r.Readable() || r.Mappable() {
		t.Errorf("Region(config) = %+v, %v", r, err)
	}
}

func TestIRQsWithoutKernel(t *testing.T) {
	d, _ := newFileDevice(t, 0, 1, 1, 5, 0, 1) // INTx, MSI, MSI-X, ERR, REQ
	irqs := d.IRQs()
	for kind, want := range map[IRQKind]int{IRQINTx: 1, IRQMSI: 1, IRQMSIX: 5, IRQErr: 0} {
		if n, err := irqs.Count(kind); err != nil || n != want {
			t.Errorf("Count(%v) = %d, %v; want %d", kind, n, err, want)
		}
	}
	_, err := irqs.Count(IRQKind(7))
	wantErr(t, err, ErrNotSupported)
	wantErr(t, irqs.Enable(IRQErr, []int{3}), ErrNotSupported, "no ERR interrupt")
	wantErr(t, irqs.Enable(IRQMSI, []int{3, 4}), nil, "2 eventfds given", "1 vectors")
	wantErr(t, irqs.Enable(IRQMSIX, nil), nil, "0 eventfds")
	// Nothing enabled: Disable has nothing to do and asks nothing of the kernel.
	if err := irqs.Disable(IRQMSIX); err != nil {
		t.Errorf("Disable of a kind never enabled: %v", err)
	}
	// A valid request reaches the ioctl, which a plain file refuses.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	err = irqs.Enable(IRQMSIX, []int{efd})
	wantErr(t, err, unix.ENOTTY, "VFIO_DEVICE_SET_IRQS MSI-X")
	if d.irqOn {
		t.Error("a failed Enable recorded MSI-X as enabled")
	}
}

func TestResetNeedsResetFlag(t *testing.T) {
	d, _ := newFileDevice(t, 0)
	wantErr(t, d.Reset(), ErrNotSupported, "no reset")
	d2, _ := newFileDevice(t, deviceFlagsReset)
	if err := d2.Reset(); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("Reset on a device that can reset should reach the ioctl; got %v", err)
	}
}

func TestBARAccessAllocatesNothing(t *testing.T) {
	d, _ := newFileDevice(t, 0)
	bar, err := d.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	var sink uint32
	allocs := testing.AllocsPerRun(1000, func() {
		bar.Write32(0x3818, sink)
		sink += bar.Read32(0x3818)
	})
	if allocs != 0 {
		t.Errorf("register access allocates %.1f times per op", allocs)
	}
}

func BenchmarkBARRead32(b *testing.B) {
	bar := benchBAR(b)
	var sink uint32
	b.ReportAllocs()
	for b.Loop() {
		sink += bar.Read32(0x8)
	}
	_ = sink
}

func BenchmarkBARWrite32(b *testing.B) {
	bar := benchBAR(b)
	b.ReportAllocs()
	var v uint32
	for b.Loop() {
		v++
		bar.Write32(0x3818, v)
	}
}

func benchBAR(b *testing.B) BAR {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "bar"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(fileBAR0Size); err != nil {
		b.Fatal(err)
	}
	bar, err := mapBAR(f, RegionInfo{Flags: regionFlagMmap, Size: fileBAR0Size})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bar.unmap(); f.Close() })
	return bar
}
