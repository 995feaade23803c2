//go:build vfioguest

// Guest-side integration test: it runs inside a QEMU guest (make test-vfio,
// test/vfio-qemu/) against an emulated Intel 82574 (QEMU's e1000e, 8086:10d3)
// bound to vfio-pci behind a virtual intel-iommu, and drives every ioctl of
// the package through the real kernel. The harness builds it with
//
//	CGO_ENABLED=0 go test -c -tags vfioguest -o vfio.test ./vfio
//
// and runs `/vfio.test -test.v -test.run TestGuest` with ZCNET_VFIO_DEVICE set
// to the e1000e's PCI address.

package vfio

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// e1000e (82574) facts the test relies on, from QEMU's hw/net/e1000e.c and
// e1000e_core.c.
const (
	e1000eVendor   = 0x8086
	e1000eDevice   = 0x10d3
	e1000eBAR0Size = 128 << 10 // E1000E_MMIO_SIZE
	e1000eMSIX     = 5         // E1000E_MSIX_VEC_NUM
	e1000eMSI      = 1         // msi_init(..., 1 vector, ...)

	regSTATUS = 0x0008
	regICR    = 0x00c0 // interrupt cause, read to clear
	regICS    = 0x00c8 // interrupt cause set
	regIMS    = 0x00d0 // interrupt mask set
	regIMC    = 0x00d8 // interrupt mask clear
	regRDBAL0 = 0x2800 // RX descriptor base low: plain read/write, low 4 bits zero
	icrLSC    = 1 << 2 // link status change cause, harmless to raise by hand
)

const (
	guestDMAIOVA = 4 << 30 // 4 GiB: above the 32-bit hole
	guestDMASize = 2 << 20 // 2 MiB
)

func guestAddress(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("ZCNET_VFIO_DEVICE")
	if addr == "" {
		t.Fatal("ZCNET_VFIO_DEVICE is unset: set it to the PCI address of the e1000e bound to vfio-pci (the QEMU harness in test/vfio-qemu does)")
	}
	a, err := NormalizeAddress(addr)
	if err != nil {
		t.Fatalf("ZCNET_VFIO_DEVICE: %v", err)
	}
	return a
}

// TestGuestSetupSequence walks the VFIO sequence one call at a time through
// the exported building blocks, checking the kernel's view after each step.
func TestGuestSetupSequence(t *testing.T) {
	addr := guestAddress(t)

	group, err := IOMMUGroup(addr)
	if err != nil {
		t.Fatal(err)
	}
	members, err := GroupMembers(group)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s is in IOMMU group %d: %v", addr, group, members)

	c, err := OpenContainer()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v, err := c.APIVersion(); err != nil || v != 0 {
		t.Fatalf("APIVersion = %d, %v; want 0", v, err)
	}
	if ok, err := c.CheckExtension(Type1v2IOMMU); err != nil || !ok {
		t.Fatalf("CheckExtension(TYPE1v2) = %v, %v; want true", ok, err)
	}
	if ok, err := c.CheckExtension(NoIOMMU); err != nil {
		t.Errorf("CheckExtension(NOIOMMU): %v", err)
	} else {
		t.Logf("no-IOMMU extension offered: %v (Debian kernels build without it)", ok)
	}
	if c.IOMMU() != 0 {
		t.Errorf("fresh container reports IOMMU %v", c.IOMMU())
	}

	g, err := OpenGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	st, err := g.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Viable() || st.ContainerSet() {
		t.Fatalf("group status before SET_CONTAINER = %#x: want VIABLE without CONTAINER_SET", uint32(st))
	}

	if err := c.AddGroup(g); err != nil {
		t.Fatal(err)
	}
	st, err = g.Status()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Viable() || !st.ContainerSet() {
		t.Fatalf("group status after SET_CONTAINER = %#x: want VIABLE|CONTAINER_SET", uint32(st))
	}
	if c.IOMMU() != Type1v2IOMMU {
		t.Errorf("container IOMMU = %v after the first group, want TYPE1v2", c.IOMMU())
	}
	if err := c.AddGroup(g); err == nil {
		t.Error("adding the same group twice succeeded")
	}
	if ps, err := c.PageSizes(); err != nil || ps&4096 == 0 {
		t.Errorf("PageSizes = %#x, %v; want the 4 KiB bit set", ps, err)
	} else {
		t.Logf("IOMMU page sizes %#x", ps)
	}

	d, err := g.OpenDevice(addr)
	if err != nil {
		t.Fatal(err)
	}
	info := d.Info()
	t.Logf("device info: flags %#x, %d regions, %d IRQ indexes", info.Flags, info.NumRegions, info.NumIRQs)
	if !info.IsPCI() || info.NumRegions < 7 || info.NumIRQs < 5 {
		t.Errorf("device info %+v: want a PCI device with >= 7 regions (9 on vfio-pci) and >= 5 IRQ indexes", info)
	}
	if d.DMA() != DMAMapper(c) {
		t.Error("device DMA() is not its container")
	}
	if err := d.Close(); err != nil {
		t.Errorf("close device: %v", err)
	}
}

// TestGuestDevice opens the device with Open and exercises it.
func TestGuestDevice(t *testing.T) {
	addr := guestAddress(t)
	d, err := Open(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	if d.Address() != addr {
		t.Errorf("Address = %q, want %q", d.Address(), addr)
	}
	info := d.Info()
	if info.NumRegions < 7 || info.NumIRQs < 5 {
		t.Fatalf("device info %+v: want >= 7 regions and 5 IRQ indexes", info)
	}

	t.Run("Busy", func(t *testing.T) {
		// The group is exclusive: a second open, as another process would
		// do, is refused with EBUSY and the error says so.
		group, err := IOMMUGroup(addr)
		if err != nil {
			t.Fatal(err)
		}
		g, err := OpenGroup(group)
		if err == nil {
			g.Close()
			t.Fatal("second open of the group file succeeded")
		}
		if !errors.Is(err, ErrBusy) || !errors.Is(err, unix.EBUSY) {
			t.Errorf("second open: %v; want ErrBusy wrapping EBUSY", err)
		}
		t.Logf("second open refused as expected: %v", err)
		if _, err := Open(addr); !errors.Is(err, ErrBusy) {
			t.Errorf("second Open: %v; want ErrBusy", err)
		}
	})

	t.Run("Regions", func(t *testing.T) {
		bar0, err := d.Region(RegionBAR0)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("BAR0 region: %+v", bar0)
		if bar0.Size != e1000eBAR0Size || !bar0.Readable() || !bar0.Writable() || !bar0.Mappable() {
			t.Errorf("BAR0 region %+v: want 128 KiB, readable, writable, mmap-able", bar0)
		}
		cfg, err := d.Region(RegionConfig)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("config region: %+v", cfg)
		if cfg.Size < 256 || !cfg.Readable() || !cfg.Writable() {
			t.Errorf("config region %+v: want >= 256 bytes, readable and writable", cfg)
		}
		if cfg.Offset == bar0.Offset {
			t.Errorf("config and BAR0 regions share offset %#x", cfg.Offset)
		}
	})

	t.Run("ConfigSpace", func(t *testing.T) {
		cfg := d.Config()
		vendor, err := cfg.Read16(PCIVendorID)
		if err != nil {
			t.Fatal(err)
		}
		device, err := cfg.Read16(PCIDeviceID)
		if err != nil {
			t.Fatal(err)
		}
		if vendor != e1000eVendor || device != e1000eDevice {
			t.Fatalf("config space IDs %04x:%04x, want %04x:%04x", vendor, device, e1000eVendor, e1000eDevice)
		}
		if err := EnableBusMaster(cfg); err != nil {
			t.Fatal(err)
		}
		cmd, err := cfg.Read16(PCICommand)
		if err != nil {
			t.Fatal(err)
		}
		if cmd&(PCICommandMemory|PCICommandMaster) != PCICommandMemory|PCICommandMaster {
			t.Errorf("command register %#x after EnableBusMaster: memory and bus master bits not both set", cmd)
		}
	})

	t.Run("BAR0", func(t *testing.T) {
		bar, err := d.BAR(0)
		if err != nil {
			t.Fatal(err)
		}
		if bar.Len() != e1000eBAR0Size {
			t.Errorf("BAR0 Len = %d, want %d", bar.Len(), e1000eBAR0Size)
		}
		// STATUS may change between reads (link coming up), so compare a
		// pread against two mmap reads that agree with each other.
		var viaMmap, viaPread uint32
		for try := 0; ; try++ {
			before := bar.Read32(regSTATUS)
			viaPread = guestPread32(t, d, regSTATUS)
			after := bar.Read32(regSTATUS)
			if before == after {
				viaMmap = before
				break
			}
			if try == 10 {
				t.Fatalf("STATUS keeps changing: %#x then %#x", before, after)
			}
		}
		t.Logf("STATUS = %#x (mmap), %#x (pread)", viaMmap, viaPread)
		if viaMmap != viaPread {
			t.Errorf("STATUS through mmap %#x != through pread %#x", viaMmap, viaPread)
		}
		if viaMmap == 0xffffffff {
			t.Errorf("STATUS reads all ones: the device does not answer")
		}

		// A store through the mapping is seen by pread and the reverse.
		bar.Write32(regRDBAL0, 0x12345680)
		if got := guestPread32(t, d, regRDBAL0); got != 0x12345680 {
			t.Errorf("RDBAL0 written via mmap, pread gives %#x", got)
		}
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], 0x0badf000)
		if err := d.WriteRegion(RegionBAR0, b[:], regRDBAL0); err != nil {
			t.Fatal(err)
		}
		if got := bar.Read32(regRDBAL0); got != 0x0badf000 {
			t.Errorf("RDBAL0 written via pwrite, mmap gives %#x", got)
		}
		bar.Write32(regRDBAL0, 0)
	})

	t.Run("DMA", func(t *testing.T) {
		mem, err := unix.Mmap(-1, 0, guestDMASize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(mem)
		dma := d.DMA()
		if err := dma.MapDMA(guestDMAIOVA, mem); err != nil {
			t.Fatal(err)
		}
		err = dma.MapDMA(guestDMAIOVA, mem)
		if err == nil {
			t.Error("second MapDMA of the same IOVA succeeded")
		} else if !errors.Is(err, unix.EEXIST) {
			t.Errorf("second MapDMA: %v; want EEXIST", err)
		} else {
			t.Logf("second map refused as expected: %v", err)
		}
		if err := dma.UnmapDMA(guestDMAIOVA, guestDMASize); err != nil {
			t.Fatal(err)
		}
		if err := dma.UnmapDMA(guestDMAIOVA, guestDMASize); err == nil {
			t.Error("UnmapDMA of an unmapped range reported success")
		}
		// The range is free again.
		if err := dma.MapDMA(guestDMAIOVA, mem); err != nil {
			t.Errorf("MapDMA after UnmapDMA: %v", err)
		} else if err := dma.UnmapDMA(guestDMAIOVA, guestDMASize); err != nil {
			t.Error(err)
		}
	})

	t.Run("IRQInfo", func(t *testing.T) {
		want := map[IRQKind]int{IRQINTx: 1, IRQMSI: e1000eMSI, IRQMSIX: e1000eMSIX}
		for kind, n := range want {
			ii, err := d.IRQInfo(kind)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v: %d vectors, flags %#x", kind, ii.Count, ii.Flags)
			if ii.Count != n || !ii.Eventfd() {
				t.Errorf("%v: %d vectors (flags %#x), want %d with EVENTFD", kind, ii.Count, ii.Flags, n)
			}
		}
		if ii, _ := d.IRQInfo(IRQINTx); !ii.Automasked() {
			t.Errorf("INTx flags %#x: want AUTOMASKED", ii.Flags)
		}
	})

	t.Run("MSI", func(t *testing.T) {
		irqs := d.IRQs()
		efd := guestEventfd(t)
		if err := irqs.Enable(IRQMSI, []int{efd}); err != nil {
			t.Fatal(err)
		}
		// MSI-X while MSI is on is refused before reaching the kernel.
		if err := irqs.Enable(IRQMSIX, []int{efd}); err == nil {
			t.Error("enabling MSI-X while MSI is enabled succeeded")
		}
		guestRaiseAndWait(t, d, efd)
		if err := irqs.Disable(IRQMSI); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("MSIX", func(t *testing.T) {
		irqs := d.IRQs()
		fds := make([]int, e1000eMSIX)
		for i := range fds {
			fds[i] = guestEventfd(t)
		}
		if err := irqs.Enable(IRQMSIX, fds); err != nil {
			t.Fatal(err)
		}
		// Re-enabling with fewer vectors replaces the set.
		if err := irqs.Enable(IRQMSIX, fds[:1]); err != nil {
			t.Fatal(err)
		}
		if err := irqs.Disable(IRQMSIX); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Reset", func(t *testing.T) {
		if !d.Info().CanReset() {
			t.Fatalf("device flags %#x: no RESET, but QEMU's e1000e has FLR", d.Info().Flags)
		}
		if err := d.Reset(); err != nil {
			t.Fatal(err)
		}
		vendor, err := d.Config().Read16(PCIVendorID)
		if err != nil || vendor != e1000eVendor {
			t.Errorf("vendor ID after reset = %#x, %v", vendor, err)
		}
		bar, err := d.BAR(0)
		if err != nil {
			t.Fatal(err)
		}
		if s := bar.Read32(regSTATUS); s == 0xffffffff {
			t.Errorf("STATUS after reset reads all ones")
		}
	})
}

func guestPread32(t *testing.T, d *PCIDevice, off uint64) uint32 {
	t.Helper()
	var b [4]byte
	if err := d.ReadRegion(RegionBAR0, b[:], off); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint32(b[:])
}

func guestEventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// guestRaiseAndWait makes the e1000e raise a link-status-change interrupt
// (IMS then ICS) and waits for the eventfd VFIO signals from its MSI handler.
func guestRaiseAndWait(t *testing.T, d *PCIDevice, efd int) {
	t.Helper()
	bar, err := d.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := EnableBusMaster(d.Config()); err != nil { // MSI writes are bus-master writes
		t.Fatal(err)
	}
	bar.Read32(regICR) // clear stale causes
	bar.Write32(regIMS, icrLSC)
	bar.Write32(regICS, icrLSC)
	defer func() {
		bar.Write32(regIMC, 0xffffffff)
		bar.Read32(regICR)
	}()
	pfd := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := unix.Poll(pfd, int(time.Until(deadline).Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll eventfd: %v", err)
		}
		if n == 0 {
			t.Fatalf("no MSI within 10 s after ICS=LSC with IMS=LSC (ICR now %#x)", bar.Read32(regICR))
		}
		break
	}
	var b [8]byte
	if _, err := unix.Read(efd, b[:]); err != nil {
		t.Fatalf("read eventfd: %v", err)
	}
	t.Logf("MSI delivered: eventfd count %d", binary.NativeEndian.Uint64(b[:]))
}
