package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// DeviceInfo is VFIO_DEVICE_GET_INFO.
type DeviceInfo struct {
	Flags      uint32
	NumRegions int // highest region index + 1 (9 for vfio-pci, more with device-specific regions)
	NumIRQs    int // highest interrupt index + 1 (5 for vfio-pci)
}

// CanReset reports VFIO_DEVICE_FLAGS_RESET: VFIO_DEVICE_RESET will work.
func (i DeviceInfo) CanReset() bool { return i.Flags&deviceFlagsReset != 0 }

// IsPCI reports VFIO_DEVICE_FLAGS_PCI: a vfio-pci device.
func (i DeviceInfo) IsPCI() bool { return i.Flags&deviceFlagsPCI != 0 }

// RegionInfo is VFIO_DEVICE_GET_REGION_INFO: where one region (a BAR, the
// expansion ROM, the configuration space) lives in the device file.
type RegionInfo struct {
	Index  int
	Flags  uint32
	Size   uint64 // bytes; 0 for a BAR the device does not implement
	Offset uint64 // of the region in the device fd, for pread/pwrite and mmap
}

func (r RegionInfo) Readable() bool { return r.Flags&regionFlagRead != 0 }
func (r RegionInfo) Writable() bool { return r.Flags&regionFlagWrite != 0 }
func (r RegionInfo) Mappable() bool { return r.Flags&regionFlagMmap != 0 }

// IRQInfo is VFIO_DEVICE_GET_IRQ_INFO for one interrupt index.
type IRQInfo struct {
	Kind  IRQKind
	Flags uint32
	Count int // vectors; 0 when the function lacks this kind
}

// Eventfd reports that the vectors can signal eventfds.
func (i IRQInfo) Eventfd() bool { return i.Flags&irqInfoEventfd != 0 }

// Automasked reports a level-triggered interrupt (INTx) that VFIO masks when
// it fires; the driver unmasks it (UnmaskINTx) after serving the device.
func (i IRQInfo) Automasked() bool { return i.Flags&irqInfoAutomasked != 0 }

// PCIDevice is a PCI function opened through VFIO. It implements Device.
type PCIDevice struct {
	addr      PCIAddress
	file      *os.File
	container *Container
	info      DeviceInfo
	regions   []RegionInfo
	irqInfo   []IRQInfo
	config    configSpace

	mu      sync.Mutex
	bars    [6]*mappedBAR
	irqOn   bool
	irqKind IRQKind
	closed  bool
	release func() error // drops what Open acquired for this device
}

var _ Device = (*PCIDevice)(nil)

// newPCIDevice reads the device's information from the kernel.
func newPCIDevice(addr PCIAddress, f *os.File, c *Container) (*PCIDevice, error) {
	di := deviceInfo{argsz: 20}
	if _, err := ioctlPtr(f, reqDeviceGetInfo, &di); err != nil {
		return nil, fmt.Errorf("VFIO_DEVICE_GET_INFO %s: %w", addr, err)
	}
	info := DeviceInfo{Flags: di.flags, NumRegions: int(di.numRegions), NumIRQs: int(di.numIRQs)}
	if !info.IsPCI() {
		return nil, fmt.Errorf("open %s: VFIO reports a device that is not vfio-pci (flags %#x)", addr, di.flags)
	}
	if info.NumRegions <= RegionConfig {
		return nil, fmt.Errorf("open %s: VFIO reports %d regions, a PCI device has at least %d", addr, info.NumRegions, RegionConfig+1)
	}
	regions := make([]RegionInfo, info.NumRegions)
	for i := range regions {
		ri := regionInfo{argsz: 32, index: uint32(i)}
		if _, err := ioctlPtr(f, reqDeviceGetRegionInfo, &ri); err != nil {
			// vfio-pci answers EINVAL for VGA on non-VGA devices; such a
			// region is simply absent.
			if errors.Is(err, unix.EINVAL) {
				regions[i] = RegionInfo{Index: i}
				continue
			}
			return nil, fmt.Errorf("VFIO_DEVICE_GET_REGION_INFO %s region %d: %w", addr, i, err)
		}
		regions[i] = RegionInfo{Index: i, Flags: ri.flags, Size: ri.size, Offset: ri.offset}
	}
	irqs := make([]IRQInfo, info.NumIRQs)
	for i := range irqs {
		ii := irqInfo{argsz: 16, index: uint32(i)}
		if _, err := ioctlPtr(f, reqDeviceGetIRQInfo, &ii); err != nil {
			return nil, fmt.Errorf("VFIO_DEVICE_GET_IRQ_INFO %s index %d: %w", addr, i, err)
		}
		irqs[i] = IRQInfo{Kind: IRQKind(i), Flags: ii.flags, Count: int(ii.count)}
	}
	return assemblePCIDevice(addr, f, c, info, regions, irqs)
}

// assemblePCIDevice builds a PCIDevice from information already read; tests
// use it with a plain file standing in for the device fd.
func assemblePCIDevice(addr PCIAddress, f *os.File, c *Container, info DeviceInfo, regions []RegionInfo, irqs []IRQInfo) (*PCIDevice, error) {
	if len(regions) <= RegionConfig {
		return nil, fmt.Errorf("open %s: no configuration space region", addr)
	}
	cfg := regions[RegionConfig]
	if !cfg.Readable() || !cfg.Writable() || cfg.Size < 64 {
		return nil, fmt.Errorf("open %s: unusable configuration space region (flags %#x, %d bytes)", addr, cfg.Flags, cfg.Size)
	}
	return &PCIDevice{
		addr:      addr,
		file:      f,
		container: c,
		info:      info,
		regions:   regions,
		irqInfo:   irqs,
		config:    configSpace{file: f, base: int64(cfg.Offset), size: int64(cfg.Size), addr: addr},
	}, nil
}

// Address returns the PCI address, e.g. "0000:01:00.0".
func (d *PCIDevice) Address() string { return d.addr.String() }

// Info returns VFIO_DEVICE_GET_INFO as read at open.
func (d *PCIDevice) Info() DeviceInfo { return d.info }

// Container returns the container (IOMMU domain) the device is in.
func (d *PCIDevice) Container() *Container { return d.container }

// DMA returns the container, the device's IOMMU domain.
func (d *PCIDevice) DMA() DMAMapper { return d.container }

// Region returns the information of region index (RegionBAR0+n, RegionROM,
// RegionConfig, ...).
func (d *PCIDevice) Region(index int) (RegionInfo, error) {
	if index < 0 || index >= len(d.regions) {
		return RegionInfo{}, fmt.Errorf("%s: no region %d (the device has %d)", d.addr, index, len(d.regions))
	}
	return d.regions[index], nil
}

// IRQInfo returns the interrupt information of kind.
func (d *PCIDevice) IRQInfo(kind IRQKind) (IRQInfo, error) {
	if kind < 0 || int(kind) >= len(d.irqInfo) {
		return IRQInfo{}, fmt.Errorf("%w: %s has no %v interrupt index", ErrNotSupported, d.addr, kind)
	}
	return d.irqInfo[kind], nil
}

// ReadRegion reads len(p) bytes at off within region index with pread on the
// device fd. It works for regions that cannot be mmap'd (I/O-port BARs) and
// is the slow but always available path to registers.
func (d *PCIDevice) ReadRegion(index int, p []byte, off uint64) error {
	return d.regionIO(index, p, off, false)
}

// WriteRegion writes p at off within region index with pwrite.
func (d *PCIDevice) WriteRegion(index int, p []byte, off uint64) error {
	return d.regionIO(index, p, off, true)
}

func (d *PCIDevice) regionIO(index int, p []byte, off uint64, write bool) error {
	r, err := d.regionRange(index, off, len(p))
	if err != nil {
		return err
	}
	op, allowed, io := "read", r.Readable(), d.file.ReadAt
	if write {
		op, allowed, io = "write", r.Writable(), d.file.WriteAt
	}
	if !allowed {
		return fmt.Errorf("%w: %s region %d does not allow %s", ErrNotSupported, d.addr, index, op)
	}
	if _, err := io(p, int64(r.Offset+off)); err != nil {
		return fmt.Errorf("%s %s region %d at %#x: %w", op, d.addr, index, off, err)
	}
	return nil
}

func (d *PCIDevice) regionRange(index int, off uint64, n int) (RegionInfo, error) {
	r, err := d.Region(index)
	if err != nil {
		return r, err
	}
	if off > r.Size || uint64(n) > r.Size-off {
		return r, fmt.Errorf("%s region %d: access of %d bytes at %#x is outside its %#x bytes", d.addr, index, n, off, r.Size)
	}
	return r, nil
}

// Config returns the function's configuration space, accessed with
// pread/pwrite on the config region. vfio-pci filters it: some fields are
// virtualized (BARs, MSI/MSI-X control) and writes to others are dropped.
func (d *PCIDevice) Config() ConfigSpace { return &d.config }

// BAR maps memory BAR index (0-5) and returns it for 32-bit register access.
// Repeated calls return the same mapping; Close unmaps it. If the device's
// memory-space decoding is off, BAR turns it on: vfio-pci answers accesses
// to a BAR whose decoding is off with SIGBUS, which would kill the process.
func (d *PCIDevice) BAR(index int) (BAR, error) {
	if index < 0 || index > 5 {
		return nil, fmt.Errorf("%s: BAR index %d out of range 0-5", d.addr, index)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("%s: BAR %d: device closed", d.addr, index)
	}
	if b := d.bars[index]; b != nil {
		return b, nil
	}
	r := d.regions[RegionBAR0+index]
	switch {
	case r.Size == 0:
		return nil, fmt.Errorf("%w: %s does not implement BAR %d (it may be the upper half of a 64-bit BAR)", ErrNotSupported, d.addr, index)
	case !r.Mappable():
		return nil, fmt.Errorf("%w: %s BAR %d cannot be mmap'd (an I/O-port BAR, or vfio-pci does not allow it): use ReadRegion/WriteRegion", ErrNotSupported, d.addr, index)
	}
	if err := d.enableMemoryDecoding(); err != nil {
		return nil, err
	}
	b, err := mapBAR(d.file, r)
	if err != nil {
		return nil, fmt.Errorf("mmap %s BAR %d (%d bytes at %#x): %w", d.addr, index, r.Size, r.Offset, err)
	}
	d.bars[index] = b
	return b, nil
}

func (d *PCIDevice) enableMemoryDecoding() error {
	cmd, err := d.config.Read16(PCICommand)
	if err != nil {
		return err
	}
	if cmd&PCICommandMemory != 0 {
		return nil
	}
	return d.config.Write16(PCICommand, cmd|PCICommandMemory)
}

// Reset performs a function-level reset (VFIO_DEVICE_RESET). The kernel
// saves and restores the configuration space around it; BAR mappings stay
// valid.
func (d *PCIDevice) Reset() error {
	if !d.info.CanReset() {
		return fmt.Errorf("%w: %s offers no reset VFIO can use (no FLR, PM reset or bus reset of its own)", ErrNotSupported, d.addr)
	}
	if _, err := ioctlArg(d.file, reqDeviceReset, 0); err != nil {
		return fmt.Errorf("VFIO_DEVICE_RESET %s: %w", d.addr, err)
	}
	return nil
}

// Close releases the device: BAR mappings are unmapped (using a BAR after
// Close faults), interrupts are torn down by the kernel, and the group and
// container that Open created for it are closed with their last device.
func (d *PCIDevice) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var errs []error
	for i, b := range d.bars {
		if b != nil {
			errs = append(errs, b.unmap())
			d.bars[i] = nil
		}
	}
	d.mu.Unlock()
	errs = append(errs, d.file.Close())
	if d.release != nil {
		errs = append(errs, d.release())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s: %w", d.addr, err)
	}
	return nil
}

// mappedBAR is a BAR mapped into the process with mmap.
type mappedBAR struct {
	mapping []byte // the whole mmap'd area, page rounded
	mem     []byte // the BAR itself: mapping[:size]
}

var _ BAR = (*mappedBAR)(nil)

func mapBAR(f *os.File, r RegionInfo) (*mappedBAR, error) {
	length := (r.Size + pageSize - 1) &^ (pageSize - 1)
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var mem []byte
	var merr error
	if err := rc.Control(func(fd uintptr) {
		mem, merr = unix.Mmap(int(fd), int64(r.Offset), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}); err != nil {
		return nil, err
	}
	if merr != nil {
		return nil, merr
	}
	return &mappedBAR{mapping: mem, mem: mem[:r.Size]}, nil
}

// Read32 loads the 32-bit register at off (see mmioRead32).
func (b *mappedBAR) Read32(off uint32) uint32 { return mmioRead32(b.mem, off) }

// Write32 stores v to the 32-bit register at off (see mmioWrite32).
func (b *mappedBAR) Write32(off, v uint32) { mmioWrite32(b.mem, off, v) }

// Len is the BAR's size in bytes.
func (b *mappedBAR) Len() int { return len(b.mem) }

func (b *mappedBAR) unmap() error { return unix.Munmap(b.mapping) }

// configSpace is the config region of the device fd.
type configSpace struct {
	file *os.File
	base int64 // region offset in the device fd
	size int64
	addr PCIAddress
}

var _ ConfigSpace = (*configSpace)(nil)

// read reads n (1, 2 or 4) naturally aligned little-endian bytes at off.
func (c *configSpace) read(off, n int) (uint32, error) {
	if err := c.check(off, n); err != nil {
		return 0, err
	}
	var buf [4]byte
	if _, err := c.file.ReadAt(buf[:n], c.base+int64(off)); err != nil {
		return 0, fmt.Errorf("read config space of %s at %#x: %w", c.addr, off, err)
	}
	return binary.LittleEndian.Uint32(buf[:]), nil
}

func (c *configSpace) write(off, n int, v uint32) error {
	if err := c.check(off, n); err != nil {
		return err
	}
	var buf [4]byte
	binary.LittleEndian.PutUint32(buf[:], v)
	if _, err := c.file.WriteAt(buf[:n], c.base+int64(off)); err != nil {
		return fmt.Errorf("write config space of %s at %#x: %w", c.addr, off, err)
	}
	return nil
}

func (c *configSpace) check(off, n int) error {
	if off < 0 || int64(off)+int64(n) > c.size || off%n != 0 {
		return fmt.Errorf("config space of %s: %d-byte access at %#x is unaligned or outside its %#x bytes", c.addr, n, off, c.size)
	}
	return nil
}

func (c *configSpace) Read8(off int) (uint8, error) {
	v, err := c.read(off, 1)
	return uint8(v), err
}

func (c *configSpace) Read16(off int) (uint16, error) {
	v, err := c.read(off, 2)
	return uint16(v), err
}

func (c *configSpace) Read32(off int) (uint32, error) { return c.read(off, 4) }

// Write8 writes one byte; not part of ConfigSpace, which drivers program
// with 16- and 32-bit writes.
func (c *configSpace) Write8(off int, v uint8) error { return c.write(off, 1, uint32(v)) }

func (c *configSpace) Write16(off int, v uint16) error { return c.write(off, 2, uint32(v)) }

func (c *configSpace) Write32(off int, v uint32) error { return c.write(off, 4, v) }
