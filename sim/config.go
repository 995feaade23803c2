package sim

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// PCI identity of the modelled function: 82599ES 10-Gigabit SFI/SFP+.
const (
	VendorIntel    = 0x8086
	DeviceID82599  = 0x10FB
	configSpaceLen = 4096
)

// Capability layout of the model's configuration space.
const (
	capPM    = 0x40
	capMSI   = 0x50
	capMSIX  = 0x70
	capPCIe  = 0xA0
	msixSize = 64 // vectors
)

// configSpace is the function's PCI configuration space. Only the bits a
// driver may change are writable (per-byte masks); the command register's
// memory and bus-master bits gate BAR decoding and DMA.
type configSpace struct {
	mu       sync.Mutex
	b        [configSpaceLen]byte
	writable [configSpaceLen]byte
	// command mirrors the command register for lock-free checks on the hot
	// path.
	command atomic.Uint32
	// flr is called, without mu held, when the driver starts a
	// function-level reset through the PCI Express device control register.
	flr func()
	// wrote, when set, is called without mu held after every write, with
	// the written offset and width (the PF's SR-IOV control, sriov.go).
	wrote func(off, n int)
}

func (c *configSpace) init(flr func()) {
	c.flr = flr
	le := binary.LittleEndian
	b := c.b[:]
	le.PutUint16(b[vfio.PCIVendorID:], VendorIntel)
	le.PutUint16(b[vfio.PCIDeviceID:], DeviceID82599)
	// vfio-pci enables memory decoding when it takes the device; bus
	// mastering is the driver's job.
	le.PutUint16(b[vfio.PCICommand:], vfio.PCICommandMemory)
	le.PutUint16(b[vfio.PCIStatus:], vfio.PCIStatusCapList)
	b[vfio.PCIRevision] = 0x01
	b[0x0B] = 0x02 // class: network controller, subclass 0 Ethernet
	b[vfio.PCIHeaderType] = 0x00
	le.PutUint32(b[vfio.PCIBAR0:], 0xF0000000|0x4) // 64-bit memory BAR
	le.PutUint16(b[vfio.PCISubVendor:], VendorIntel)
	le.PutUint16(b[vfio.PCISubsystem:], 0x000C)
	b[vfio.PCICapPtr] = capPM

	b[capPM], b[capPM+1] = 0x01, capMSI
	le.PutUint16(b[capPM+2:], 0x0003) // PM version 3
	b[capMSI], b[capMSI+1] = 0x05, capMSIX
	le.PutUint16(b[capMSI+2:], 0x0080) // 64-bit address capable, 1 vector
	b[capMSIX], b[capMSIX+1] = vfio.PCICapIDMSIX, capPCIe
	le.PutUint16(b[capMSIX+2:], msixSize-1)
	le.PutUint32(b[capMSIX+4:], 4)        // table in BAR 4 at offset 0
	le.PutUint32(b[capMSIX+8:], 0x2000|4) // PBA in BAR 4 at 0x2000
	b[capPCIe], b[capPCIe+1] = vfio.PCICapIDPCIExpress, 0
	le.PutUint16(b[capPCIe+2:], 0x0002)    // version 2, endpoint
	le.PutUint32(b[capPCIe+4:], 1<<28|0x2) // device caps: FLR, 512-byte payload
	le.PutUint16(b[capPCIe+vfio.PCIExpressDevCtl:], 0x2810)

	w := c.writable[:]
	le.PutUint16(w[vfio.PCICommand:], 0x0547) // IO, memory, master, parity, SERR, INTx off
	le.PutUint32(w[vfio.PCIBAR0:], ^uint32(BAR0Size-1))
	le.PutUint32(w[vfio.PCIBAR0+4:], 0xFFFFFFFF)
	le.PutUint16(w[capPM+4:], 0x0003)  // power state
	le.PutUint16(w[capMSI+2:], 0x0071) // MSI enable, multiple message enable
	le.PutUint32(w[capMSI+4:], 0xFFFFFFFC)
	le.PutUint32(w[capMSI+8:], 0xFFFFFFFF)
	le.PutUint16(w[capMSI+12:], 0xFFFF)
	le.PutUint16(w[capMSIX+2:], 0xC000) // MSI-X enable, function mask
	le.PutUint16(w[capPCIe+vfio.PCIExpressDevCtl:], 0xFFFF)
	c.command.Store(uint32(vfio.PCICommandMemory))
}

func (c *configSpace) memoryEnabled() bool {
	return c.command.Load()&vfio.PCICommandMemory != 0
}

func (c *configSpace) busMaster() bool {
	return c.command.Load()&vfio.PCICommandMaster != 0
}

func (c *configSpace) check(off, n int) error {
	if off < 0 || off+n > configSpaceLen || off%n != 0 {
		return fmt.Errorf("sim: config space access of %d bytes at %#x: out of range or unaligned: %w", n, off, unix.EINVAL)
	}
	return nil
}

func (c *configSpace) read(off, n int) (uint32, error) {
	if err := c.check(off, n); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var v uint32
	for i := n - 1; i >= 0; i-- {
		v = v<<8 | uint32(c.b[off+i])
	}
	return v, nil
}

func (c *configSpace) write(off, n int, v uint32) error {
	if err := c.check(off, n); err != nil {
		return err
	}
	c.mu.Lock()
	for i := 0; i < n; i++ {
		m := c.writable[off+i]
		c.b[off+i] = c.b[off+i]&^m | byte(v>>(8*i))&m
	}
	c.command.Store(uint32(binary.LittleEndian.Uint16(c.b[vfio.PCICommand:])))
	devctl := capPCIe + vfio.PCIExpressDevCtl
	flr := binary.LittleEndian.Uint16(c.b[devctl:])&vfio.PCIExpressDevCtlFLR != 0
	if flr {
		// Initiate FLR is self-clearing.
		binary.LittleEndian.PutUint16(c.b[devctl:], binary.LittleEndian.Uint16(c.b[devctl:])&^vfio.PCIExpressDevCtlFLR)
	}
	c.mu.Unlock()
	if flr && c.flr != nil {
		c.flr()
	}
	if c.wrote != nil {
		c.wrote(off, n)
	}
	return nil
}

// configPort is the vfio.ConfigSpace view of configSpace.
type configPort struct{ c *configSpace }

func (p configPort) Read8(off int) (uint8, error) {
	v, err := p.c.read(off, 1)
	return uint8(v), err
}

func (p configPort) Read16(off int) (uint16, error) {
	v, err := p.c.read(off, 2)
	return uint16(v), err
}

func (p configPort) Read32(off int) (uint32, error) { return p.c.read(off, 4) }

func (p configPort) Write16(off int, v uint16) error { return p.c.write(off, 2, uint32(v)) }

func (p configPort) Write32(off int, v uint32) error { return p.c.write(off, 4, v) }
