// Package vfio is zcnet's only door to PCI hardware. It wraps the Linux VFIO
// API (container, group, device, regions, DMA mapping, interrupts, reset) and
// defines the small interfaces the drivers above it program against. The
// register-level simulator in sim/ implements the same interfaces, so a driver
// runs unchanged on silicon or on the model; nothing above this package issues
// an ioctl.
package vfio

import "errors"

// Device is one PCI function taken away from the kernel: the registers behind
// its BARs, its configuration space, the IOMMU domain its DMA goes through,
// its interrupts and its function-level reset.
type Device interface {
	// Address is the PCI address in domain:bus:device.function form.
	Address() string
	// BAR returns memory BAR index (0-5), mapped for register access.
	BAR(index int) (BAR, error)
	// Config gives access to the function's PCI configuration space.
	Config() ConfigSpace
	// DMA is the IOMMU domain the device's DMA is translated through.
	DMA() DMAMapper
	// IRQs sets up interrupt delivery through eventfds.
	IRQs() IRQs
	// Reset performs a function-level reset of the device.
	Reset() error
	// Close releases the device; BAR mappings become invalid.
	Close() error
}

// BAR is a memory-mapped register window. Reads and writes are 32 bits wide,
// naturally aligned and ordered with respect to each other and to prior
// stores to DMA memory: a tail write issued after descriptors are written is
// seen by the device after them.
type BAR interface {
	Read32(off uint32) uint32
	Write32(off uint32, v uint32)
	// Len is the size of the window in bytes.
	Len() int
}

// ConfigSpace is the PCI configuration space of a function. Accesses are
// little-endian, as PCI defines them.
type ConfigSpace interface {
	Read8(off int) (uint8, error)
	Read16(off int) (uint16, error)
	Read32(off int) (uint32, error)
	Write16(off int, v uint16) error
	Write32(off int, v uint32) error
}

// DMAMapper is an IOMMU domain: memory mapped here becomes reachable by the
// device at the given I/O virtual address, and nothing else is.
type DMAMapper interface {
	// MapDMA makes mem reachable by the device at iova. mem must stay
	// allocated (and must not move) until UnmapDMA; hugepage or mmap-backed
	// memory satisfies that, Go heap memory does not. iova, len(mem) and the
	// address of mem must be page aligned.
	MapDMA(iova uint64, mem []byte) error
	// UnmapDMA removes a mapping made by MapDMA with the same iova and size.
	UnmapDMA(iova uint64, size uint64) error
}

// IRQKind selects an interrupt index of a PCI function.
type IRQKind int

// The interrupt indexes VFIO defines for PCI devices (enum in linux/vfio.h).
const (
	IRQINTx IRQKind = 0
	IRQMSI  IRQKind = 1
	IRQMSIX IRQKind = 2
	IRQErr  IRQKind = 3
	IRQReq  IRQKind = 4
)

func (k IRQKind) String() string {
	switch k {
	case IRQINTx:
		return "INTx"
	case IRQMSI:
		return "MSI"
	case IRQMSIX:
		return "MSI-X"
	case IRQErr:
		return "ERR"
	case IRQReq:
		return "REQ"
	}
	return "IRQ?"
}

// IRQs routes a function's interrupts to eventfds.
type IRQs interface {
	// Count reports how many vectors the function offers for kind.
	Count(kind IRQKind) (int, error)
	// Enable triggers the eventfds in fds (one per vector, starting at vector
	// 0) when the device raises the corresponding interrupt.
	Enable(kind IRQKind, fds []int) error
	// Disable tears down all vectors of kind.
	Disable(kind IRQKind) error
}

// PCI configuration space offsets and bits used by every driver.
const (
	PCIVendorID   = 0x00
	PCIDeviceID   = 0x02
	PCICommand    = 0x04
	PCIStatus     = 0x06
	PCIRevision   = 0x08
	PCIClass      = 0x09
	PCIHeaderType = 0x0e
	PCIBAR0       = 0x10
	PCISubVendor  = 0x2c
	PCISubsystem  = 0x2e
	PCICapPtr     = 0x34

	PCICommandIO        = 1 << 0
	PCICommandMemory    = 1 << 1
	PCICommandMaster    = 1 << 2
	PCICommandIntxOff   = 1 << 10
	PCIStatusCapList    = 1 << 4
	PCICapIDMSIX        = 0x11
	PCICapIDPCIExpress  = 0x10
	PCIExpressDevCtl    = 0x08
	PCIExpressDevCtlFLR = 1 << 15
)

// EnableBusMaster turns on memory-space decoding and bus mastering (and turns
// INTx off) in the command register, which a function needs before its
// registers answer and before it may DMA.
func EnableBusMaster(cfg ConfigSpace) error {
	cmd, err := cfg.Read16(PCICommand)
	if err != nil {
		return err
	}
	cmd |= PCICommandMemory | PCICommandMaster | PCICommandIntxOff
	return cfg.Write16(PCICommand, cmd)
}

// ErrNotSupported is returned for an operation the device or the kernel
// cannot perform (for example an interrupt kind the function lacks).
var ErrNotSupported = errors.New("vfio: not supported")
