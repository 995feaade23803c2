package sim

import (
	"errors"
	"testing"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

func TestPCIConfigIdentity(t *testing.T) {
	p := NewPF(DefaultOptions())
	cfg := p.Config()
	if v, _ := cfg.Read16(vfio.PCIVendorID); v != 0x8086 {
		t.Errorf("vendor %#x, want 0x8086", v)
	}
	if v, _ := cfg.Read16(vfio.PCIDeviceID); v != 0x10FB {
		t.Errorf("device %#x, want 0x10FB", v)
	}
	// BAR sizing: all ones reads back the size mask.
	if err := cfg.Write32(vfio.PCIBAR0, 0xFFFFFFFF); err != nil {
		t.Fatal(err)
	}
	if v, _ := cfg.Read32(vfio.PCIBAR0); v != ^uint32(BAR0Size-1)|4 {
		t.Errorf("BAR0 after sizing write %#x, want %#x", v, ^uint32(BAR0Size-1)|4)
	}
	// The vendor ID is read-only.
	_ = cfg.Write16(vfio.PCIVendorID, 0x1234)
	if v, _ := cfg.Read16(vfio.PCIVendorID); v != 0x8086 {
		t.Errorf("vendor ID changed by a write to %#x", v)
	}
	if _, err := cfg.Read32(4097); err == nil {
		t.Error("out-of-range config read succeeded")
	}
}

func TestResetValues(t *testing.T) {
	_, bar := newPF(t, func(o *Options) { o.ResetDelay = 0 })
	for _, c := range []struct {
		name string
		off  uint32
		want uint32
	}{
		{"CTRL", tCTRL, 0},
		{"STATUS (GIO master enable)", tSTATUS, 1 << 19},
		{"HLREG0", tHLREG0, 0x08012C0B},
		{"MAXFRS", 0x04268, 1518 << 16},
		{"RXPBSIZE(0)", 0x03C00, 0x200 << 10},
		{"TXPBSIZE(0)", 0x0CC00, 0xA0 << 10},
		{"TXPBTHRESH(0)", 0x04950, 0x96},
		{"VLNCTRL", tVLNCTRL, 0x8100},
		{"SRRCTL(0)", tRxq(0, 0x14), 0x402},
		{"SRRCTL(0) at 0x2100", 0x02100, 0x402},
		{"SRRCTL(100)", tRxq(100, 0x14), 0x402},
		{"RAL(0)", tRAL, 0x105e0002},
		{"RAH(0)", tRAL + 4, 1<<31 | 0x01fb},
		{"RAH(0) at 0x5404", 0x05404, 1<<31 | 0x01fb},
		{"RAH(1)", tRAL + 12, 0},
		{"MRQC", tMRQC, 0},
		{"FCTRL", tFCTRL, 0},
		{"RXDCTL(5)", tRxq(5, 0x28), 0},
		{"TXDCTL(5)", tTxq(5, 0x28), 0},
		{"EIMS", tEIMS, 0},
		{"DTXTCPFLGL", 0x04A88, 0x0FF60FF6},
	} {
		if got := bar.Read32(c.off); got != c.want {
			t.Errorf("%s (%#x) = %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	if bar.Read32(tEEC)&(1<<8|1<<9) != 1<<8|1<<9 {
		t.Errorf("EEC %#x: PRES and ARD should be set", bar.Read32(tEEC))
	}
	if bar.Read32(tRDRXCTL)&(1<<3) == 0 {
		t.Error("RDRXCTL.DMAIDONE not set after reset")
	}
}

func TestReadOnlyAndWriteOnly(t *testing.T) {
	_, bar := newPF(t, nil)
	bar.Write32(tSTATUS, 0)
	if bar.Read32(tSTATUS)&(1<<19) == 0 {
		t.Error("write to read-only STATUS took effect")
	}
	bar.Write32(0x10148, 0xFFFFFFFF) // FWSM
	if v := bar.Read32(0x10148); v != 0 {
		t.Errorf("FWSM = %#x after write, want 0 (RO)", v)
	}
	bar.Write32(tGPRC, 1234)
	if v := bar.Read32(tGPRC); v != 0 {
		t.Errorf("statistics register took a write: %#x", v)
	}
	// EIMS is write-1-to-set, EIMC write-1-to-clear, EIMC reads 0.
	bar.Write32(tEIMS, 0x3)
	bar.Write32(tEIMS, 0x4)
	if v := bar.Read32(tEIMS); v != 0x7 {
		t.Errorf("EIMS = %#x, want 0x7 (set bits accumulate)", v)
	}
	bar.Write32(tEIMC, 0x2)
	if v := bar.Read32(tEIMS); v != 0x5 {
		t.Errorf("EIMS = %#x after EIMC 0x2, want 0x5", v)
	}
	if v := bar.Read32(tEIMC); v != 0 {
		t.Errorf("EIMC reads %#x, want 0", v)
	}
	// GIO master disable clears STATUS.GIO.
	bar.Write32(tCTRL, 1<<2)
	if bar.Read32(tSTATUS)&(1<<19) != 0 {
		t.Error("STATUS.GIO still set with CTRL.GIO_DIS")
	}
}

func TestEICRClearOnReadAndWrite1ToClear(t *testing.T) {
	_, bar := newPF(t, func(o *Options) { o.LinkDelay = 0 })
	bar.Read32(tEICR) // drop the power-on LSC
	bar.Write32(tEICS, 0x0000_0105)
	if v := bar.Read32(tEICS); v != 0x105 {
		t.Fatalf("EICS read %#x, want the causes 0x105 without clearing", v)
	}
	bar.Write32(tEICR, 0x4) // write 1 clears bit 2
	if v := bar.Read32(tEICR); v != 0x101 {
		t.Errorf("EICR = %#x, want 0x101", v)
	}
	if v := bar.Read32(tEICR); v != 0 {
		t.Errorf("EICR = %#x on second read, want 0 (clear on read)", v)
	}
	// GPIE.OCD keeps the other causes across a read.
	bar.Write32(tGPIE, 1<<5)
	bar.Write32(tEICS, 1<<20|1)
	if v := bar.Read32(tEICR); v != 1<<20|1 {
		t.Fatalf("EICR = %#x", v)
	}
	if v := bar.Read32(tEICR); v != 1<<20 {
		t.Errorf("EICR = %#x with OCD, want only LSC left", v)
	}
}

func TestSelfClearingAndGlobalReset(t *testing.T) {
	p, bar := newPF(t, func(o *Options) { o.ResetDelay = 5 })
	bar.Write32(tRAL+8, 0xdeadbeef) // RAL(1)
	bar.Write32(tMTA+40, 0xFFFF)
	bar.Write32(tEIMS, 0xFF)
	bar.Write32(tRxq(3, 0x08), 4096)
	bar.Write32(tRxq(3, 0x28), 1<<25)
	pollSet(t, bar, tRxq(3, 0x28), 1<<25)
	bar.Write32(tAUTOC, bar.Read32(tAUTOC)|1<<12)
	if bar.Read32(tAUTOC)&(1<<12) != 0 {
		t.Error("AUTOC.Restart_AN did not self-clear")
	}

	bar.Write32(tCTRL, 1<<26|1<<3)
	if v := bar.Read32(tCTRL); v&(1<<26|1<<3) != 0 {
		t.Fatalf("CTRL = %#x right after reset, RST/LRST must self-clear", v)
	}
	if bar.Read32(tEEC)&(1<<9) != 0 {
		t.Error("EEC.ARD set immediately after reset; the model should delay it")
	}
	pollSet(t, bar, tEEC, 1<<9)
	pollSet(t, bar, tRDRXCTL, 1<<3)
	for _, c := range []struct {
		name string
		off  uint32
	}{{"RAL(1)", tRAL + 8}, {"MTA(10)", tMTA + 40}, {"EIMS", tEIMS}, {"RDLEN(3)", tRxq(3, 0x08)}, {"RXDCTL(3)", tRxq(3, 0x28)}} {
		if v := bar.Read32(c.off); v != 0 {
			t.Errorf("%s = %#x after reset, want 0", c.name, v)
		}
	}
	if p.rxEnableAt[3].Load() != 0 {
		t.Error("queue 3 still enabled after reset")
	}
}

func TestEEPROMRead(t *testing.T) {
	_, bar := newPF(t, nil)
	var sum uint16
	for a := uint32(0); a <= 0x3F; a++ {
		bar.Write32(tEERD, a<<2|1)
		v := bar.Read32(tEERD)
		if v&2 == 0 {
			t.Fatalf("EERD word %#x: DONE not set", a)
		}
		sum += uint16(v >> 16)
	}
	if sum != 0xBABA {
		t.Errorf("EEPROM words 0x00-0x3F sum to %#x, want 0xBABA", sum)
	}
}

func TestUnknownOffsetsCounted(t *testing.T) {
	p, bar := newPF(t, nil)
	if v := bar.Read32(0x000C0); v != 0 {
		t.Errorf("unknown offset read %#x, want 0", v)
	}
	bar.Write32(0x1FFFC, 1)
	bar.Read32(0x000C0)
	bar.Read32(tCTRL) // known: not counted
	if c := p.Counters().Unknown; c != 3 {
		t.Errorf("unknown count %d, want 3", c)
	}
	got := p.UnknownOffsets()
	if len(got) != 2 || got[0] != (UnknownAccess{0xC0, 2}) || got[1] != (UnknownAccess{0x1FFFC, 1}) {
		t.Errorf("unknown offsets %+v", got)
	}
}

func TestQueueEnableLatches(t *testing.T) {
	_, bar := newPF(t, func(o *Options) { o.QueueEnableDelay = 3 })
	rx := tRxq(70, 0x28) // high bank
	bar.Write32(rx, 1<<25)
	for i := 0; i < 20; i++ {
		if bar.Read32(rx)&(1<<25) != 0 {
			t.Fatal("RXDCTL.ENABLE reads 1 with RDLEN=0")
		}
	}
	bar.Write32(rx, 0)
	bar.Write32(tRxq(70, 0x08), 128)
	bar.Write32(rx, 1<<25)
	if bar.Read32(rx)&(1<<25) != 0 {
		t.Error("RXDCTL.ENABLE read back at once; the model should take QueueEnableDelay ticks")
	}
	pollSet(t, bar, rx, 1<<25)
	bar.Write32(rx, 0)
	if bar.Read32(rx)&(1<<25) != 0 {
		t.Error("RXDCTL.ENABLE still set after disable")
	}
	tx := tTxq(127, 0x28)
	bar.Write32(tTxq(127, 0x08), 1024)
	bar.Write32(tx, 1<<25|8<<16)
	pollSet(t, bar, tx, 1<<25)
	if v := bar.Read32(tx); v>>16&0x7F != 8 {
		t.Errorf("TXDCTL WTHRESH lost: %#x", v)
	}
}

func TestLinkAutonegotiationAndLSCInterrupt(t *testing.T) {
	p, bar := newPF(t, func(o *Options) { o.LinkDelay = 10 })
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := p.IRQs().Enable(vfio.IRQMSIX, []int{-1, efd}); err != nil {
		t.Fatal(err)
	}
	bar.Write32(tGPIE, 1<<4)            // MSI-X mode
	bar.Write32(tIVARMISC, (0x80|1)<<8) // other causes → vector 1
	bar.Write32(tEIMS, 1<<20)           // LSC
	if bar.Read32(tLINKS)&(1<<30) != 0 {
		t.Fatal("link up before autonegotiation finished")
	}
	pollSet(t, bar, tLINKS, 1<<30|3<<28)
	if bar.Read32(tEICR)&(1<<20) == 0 {
		t.Error("EICR.LSC not raised when the link came up")
	}
	var buf [8]byte
	if n, err := unix.Read(efd, buf[:]); err != nil || n != 8 || buf[0] == 0 {
		t.Fatalf("eventfd for vector 1 not signalled: n=%d err=%v", n, err)
	}
	p.SetLink(false)
	if bar.Read32(tLINKS)&(1<<30) != 0 {
		t.Error("LINKS.UP after cable pulled")
	}
	if bar.Read32(tEICR)&(1<<20) == 0 {
		t.Error("EICR.LSC not raised on link down")
	}
	if _, err := unix.Read(efd, buf[:]); err != nil {
		t.Errorf("no interrupt for link down: %v", err)
	}
	// Masked: no interrupt.
	bar.Write32(tEIMC, 1<<20)
	p.SetLink(true)
	pollSet(t, bar, tLINKS, 1<<30)
	if _, err := unix.Read(efd, buf[:]); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("interrupt delivered while LSC masked (err %v)", err)
	}
}

func TestIOMMUMapRules(t *testing.T) {
	p := NewPF(DefaultOptions())
	mem := dmaMem(t, 4*4096)
	d := p.DMA()
	if err := d.MapDMA(0x10000, mem[:8192]); err != nil {
		t.Fatal(err)
	}
	if err := d.MapDMA(0x11000, mem[8192:]); !errors.Is(err, unix.EEXIST) {
		t.Errorf("overlapping map: %v, want EEXIST", err)
	}
	if err := d.MapDMA(0x20001, mem[8192:]); !errors.Is(err, unix.EINVAL) {
		t.Errorf("unaligned map: %v, want EINVAL", err)
	}
	if err := d.MapDMA(0x12000, mem[8192:]); err != nil {
		t.Errorf("adjacent map: %v", err)
	}
	if err := d.UnmapDMA(0x10000, 4096); !errors.Is(err, unix.EINVAL) {
		t.Errorf("partial unmap: %v, want EINVAL", err)
	}
	u := p.IOMMU()
	u.mu.RLock()
	// A write spanning the two adjacent mappings lands in both.
	if !u.dmaWrite(0x11FFE, []byte{1, 2, 3, 4}) {
		t.Error("write across adjacent mappings faulted")
	}
	if u.dmaWrite(0x13FFE, []byte{1, 2, 3, 4}) {
		t.Error("write running off the end of the mappings succeeded")
	}
	u.mu.RUnlock()
	if mem[8191] != 2 || mem[8192] != 3 {
		t.Error("spanning write did not reach memory")
	}
	if mem[16383] != 0 {
		t.Error("faulting write touched memory")
	}
	if n, last := u.Faults(); n != 1 || last != 0x14000 {
		t.Errorf("faults %d last %#x, want 1 at 0x14000", n, last)
	}
	if err := d.UnmapDMA(0x10000, 8192); err != nil {
		t.Error(err)
	}
	if err := d.UnmapDMA(0x10000, 8192); !errors.Is(err, unix.ENOENT) {
		t.Errorf("second unmap: %v, want ENOENT", err)
	}
}

// TestIOMMUMappingEndsAtItsLength: a mapping made from part of a larger
// buffer (its capacity runs on) ends at its length. DMA one byte past it
// faults and touches nothing, reads and descriptor accesses alike.
func TestIOMMUMappingEndsAtItsLength(t *testing.T) {
	p := NewPF(DefaultOptions())
	mem := dmaMem(t, 2*4096)
	if err := p.DMA().MapDMA(0x30000, mem[:4096]); err != nil {
		t.Fatal(err)
	}
	u := p.IOMMU()
	u.mu.RLock()
	if u.dmaWrite(0x30FFE, []byte{1, 2, 3, 4}) {
		t.Error("write past the mapping's length succeeded")
	}
	var dst [4]byte
	if u.dmaRead(0x30FFE, dst[:]) {
		t.Error("read past the mapping's length succeeded")
	}
	if _, ok := u.slice(0x30FF8, 16); ok {
		t.Error("descriptor access past the mapping's length succeeded")
	}
	if !u.dmaWrite(0x30FFC, []byte{5, 6, 7, 8}) {
		t.Error("write ending exactly at the mapping's end faulted")
	}
	u.mu.RUnlock()
	if mem[4096] != 0 || mem[4094] != 7 {
		t.Errorf("memory after the writes: %v (want the last in-mapping bytes written, nothing beyond)", mem[4092:4100])
	}
	if n, _ := u.Faults(); n != 3 {
		t.Errorf("%d faults, want 3", n)
	}
}
