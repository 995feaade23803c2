package sim

import (
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

// SR-IOV register offsets as the Intel shared code and the PCIe spec give
// them, written out again here.
const (
	tCTRLEXT    = 0x00018
	tGCREXT     = 0x11050
	tPFMAILBOX  = 0x04B00
	tPFMBMEM    = 0x13000
	tPFMBICR    = 0x00710
	tPFMBIMR    = 0x00720
	tPFVFLRE0   = 0x00600
	tPFVFLREC0  = 0x00700
	tVFCTRL     = 0x0000
	tVFLINKS    = 0x0010
	tVFMAILBOX  = 0x02FC
	tVFMBMEM    = 0x0200
	tVFRDBAL0   = 0x1000
	tVFTDWBAL0  = 0x2038
	tVFRXDCTL0  = 0x1028
	tSRIOVCap   = 0x160
	tEICRMBX    = 1 << 19
	tPFRSTD     = 1 << 14
	tMbxREQ     = 1 << 0
	tMbxACK     = 1 << 1
	tMbxVFU     = 1 << 2
	tMbxPFU     = 1 << 3
	tMbxPFSTS   = 1 << 4
	tMbxPFACK   = 1 << 5
	tMbxRSTI    = 1 << 6
	tMbxRSTD    = 1 << 7
	tPFMbxSTS   = 1 << 0
	tPFMbxACK   = 1 << 1
	tPFMbxPFU   = 1 << 3
	tPFMbxRVFU  = 1 << 4
	tPFMbxVFUrd = 1 << 2
)

func sriovPF(t *testing.T, n int) (*PF, vfio.BAR) {
	t.Helper()
	p, bar := newPF(t, func(o *Options) { o.Address = "0000:03:00.0" })
	if err := p.EnableVFs(n); err != nil {
		t.Fatal(err)
	}
	return p, bar
}

func vfBar(t *testing.T, p *PF, i int) vfio.BAR {
	t.Helper()
	vf := p.VF(i)
	if vf == nil {
		t.Fatalf("VF %d missing", i)
	}
	b, err := vf.BAR(0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSRIOVCapability(t *testing.T) {
	p, _ := newPF(t, func(o *Options) { o.Address = "0000:03:00.0" })
	cfg := p.Config()
	// Walk the extended capabilities from 0x100 as Linux's
	// pci_find_ext_capability does.
	pos, found := 0x100, 0
	for pos != 0 {
		h, _ := cfg.Read32(pos)
		if h&0xFFFF == 0x0010 {
			found = pos
			break
		}
		pos = int(h >> 20)
	}
	if found != tSRIOVCap {
		t.Fatalf("SR-IOV capability at %#x, want %#x", found, tSRIOVCap)
	}
	r16 := func(off int) uint16 { v, _ := cfg.Read16(found + off); return v }
	for _, c := range []struct {
		name string
		off  int
		want uint16
	}{{"InitialVFs", 0x0C, 64}, {"TotalVFs", 0x0E, 64}, {"NumVFs", 0x10, 0}, {"First VF Offset", 0x14, 128}, {"VF Stride", 0x16, 2}, {"VF Device ID", 0x1A, 0x10ED}} {
		if got := r16(c.off); got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, got, c.want)
		}
	}
	if p.NumVFs() != 0 || p.VF(0) != nil {
		t.Fatal("VFs before VF Enable")
	}
	// As sysfs sriov_numvfs does: NumVFs, then VF Enable | VF MSE.
	_ = cfg.Write16(found+0x10, 3)
	_ = cfg.Write16(found+0x08, 1|1<<3)
	if p.NumVFs() != 3 {
		t.Fatalf("NumVFs() = %d after enabling 3", p.NumVFs())
	}
	wantAddr := []string{"0000:03:10.0", "0000:03:10.2", "0000:03:10.4"}
	for i, want := range wantAddr {
		vf := p.VF(i)
		if vf.Address() != want {
			t.Errorf("VF %d at %s, want %s", i, vf.Address(), want)
		}
		ven, _ := vf.Config().Read16(0)
		dev, _ := vf.Config().Read16(2)
		if ven != 0x8086 || dev != 0x10ED {
			t.Errorf("VF %d IDs %04x:%04x", i, ven, dev)
		}
	}
	if err := p.EnableVFs(2); err == nil {
		t.Fatal("EnableVFs while enabled succeeded")
	}
	vb := vfBar(t, p, 0)
	if err := p.DisableVFs(); err != nil {
		t.Fatal(err)
	}
	if p.NumVFs() != 0 || vb.Read32(tVFMAILBOX) != 0xFFFFFFFF {
		t.Fatal("a disabled VF still decodes")
	}
}

// VF queue i is PF queue v*qpp+i, qpp from GCR_EXT.VT_Mode.
func TestVFQueueAliasing(t *testing.T) {
	p, bar := sriovPF(t, 4)
	bar.Write32(tGCREXT, 3) // 64 pools of 2
	vb := vfBar(t, p, 3)
	vb.Write32(tVFRDBAL0+0x40, 0x1234000) // VF 3 queue 1
	if got := bar.Read32(tRxq(7, 0)); got != 0x1234000 {
		t.Fatalf("PF RDBAL(7) = %#x, want the VF's write", got)
	}
	bar.Write32(tGCREXT, 2) // 32 pools of 4
	if got := vb.Read32(tVFRDBAL0 + 0x40); got != bar.Read32(tRxq(13, 0)) {
		t.Fatalf("VF 3 queue 1 with 4 queues per pool reads %#x, not PF queue 13", got)
	}
	vb.Write32(tVFRDBAL0+0x40*4, 1) // no queue 4 with 4 per pool
	if p.VF(3).UnknownAccesses() == 0 {
		t.Fatal("a queue beyond the pool's was not counted as unknown")
	}
}

func TestVFMailboxResetIndication(t *testing.T) {
	p, bar := sriovPF(t, 2)
	vb := vfBar(t, p, 1)
	// Until the PF driver sets PFRSTD, RSTI is a level.
	for i := 0; i < 2; i++ {
		if v := vb.Read32(tVFMAILBOX); v&tMbxRSTI == 0 || v&tMbxRSTD != 0 {
			t.Fatalf("before PFRSTD: VFMAILBOX %#x, want RSTI only", v)
		}
	}
	setBits(bar, tCTRLEXT, tPFRSTD)
	if v := vb.Read32(tVFMAILBOX); v&tMbxRSTI != 0 || v&tMbxRSTD == 0 {
		t.Fatalf("after PFRSTD: VFMAILBOX %#x, want RSTD", v)
	}
	if v := vb.Read32(tVFMAILBOX); v&tMbxRSTD != 0 {
		t.Fatalf("RSTD did not clear on read: %#x", v)
	}
	// A driver's later read-modify-write of CTRL_EXT does not repeat it.
	setBits(bar, tCTRLEXT, 1<<28)
	if v := vb.Read32(tVFMAILBOX); v&tMbxRSTD != 0 {
		t.Fatalf("RSTD again after an unrelated CTRL_EXT write: %#x", v)
	}
	// A PF reset raises RSTI again.
	bar.Write32(tCTRL, 1<<26)
	if v := vb.Read32(tVFMAILBOX); v&tMbxRSTI == 0 {
		t.Fatalf("after CTRL.RST: VFMAILBOX %#x, want RSTI", v)
	}
}

// The legacy exchange both ways, with the lock arbitration and the
// shared buffer.
func TestVFMailboxExchange(t *testing.T) {
	p, bar := sriovPF(t, 20)
	setBits(bar, tCTRLEXT, tPFRSTD)
	const v = 17 // PFMBICR(1) bit 1, PFMBIMR(0) bit 17
	vb := vfBar(t, p, v)
	vb.Read32(tVFMAILBOX) // consume RSTD
	bar.Write32(tPFMBIMR, 1<<v)
	bar.Read32(tEICR)

	// VF -> PF: lock, write, REQ.
	vb.Write32(tVFMAILBOX, tMbxVFU)
	if vb.Read32(tVFMAILBOX)&tMbxVFU == 0 {
		t.Fatal("VF could not take VFU")
	}
	bar.Write32(tPFMAILBOX+4*v, tPFMbxPFU)
	if got := bar.Read32(tPFMAILBOX + 4*v); got&tPFMbxPFU != 0 || got&tPFMbxVFUrd == 0 {
		t.Fatalf("PF took PFU while the VF held VFU: PFMAILBOX %#x", got)
	}
	vb.Write32(tVFMBMEM, 0x08)
	vb.Write32(tVFMBMEM+4, 5)
	vb.Write32(tVFMAILBOX, tMbxREQ) // drops VFU
	if got := bar.Read32(tPFMBICR + 4); got != 1<<(v%16) {
		t.Fatalf("PFMBICR(1) = %#x, want VFREQ for VF %d", got, v)
	}
	if bar.Read32(tEICR)&tEICRMBX == 0 {
		t.Fatal("no EICR.MAILBOX")
	}
	bar.Write32(tPFMBICR+4, 1<<(v%16))
	if bar.Read32(tPFMBICR+4) != 0 {
		t.Fatal("PFMBICR did not clear on write 1")
	}
	// PF reads: PFU, words, ACK (which releases PFU).
	bar.Write32(tPFMAILBOX+4*v, tPFMbxPFU)
	if bar.Read32(tPFMAILBOX+4*v)&tPFMbxPFU == 0 {
		t.Fatal("PF could not take PFU")
	}
	if w0, w1 := bar.Read32(tPFMBMEM+64*v), bar.Read32(tPFMBMEM+64*v+4); w0 != 8 || w1 != 5 {
		t.Fatalf("PFMBMEM(%d) = %#x %#x, want the VF's words", v, w0, w1)
	}
	vb.Write32(tVFMAILBOX, tMbxVFU)
	if vb.Read32(tVFMAILBOX)&tMbxVFU != 0 {
		t.Fatal("VF took VFU while the PF held PFU")
	}
	bar.Write32(tPFMAILBOX+4*v, tPFMbxACK)
	got := vb.Read32(tVFMAILBOX)
	if got&tMbxPFACK == 0 || got&tMbxPFU != 0 {
		t.Fatalf("VFMAILBOX %#x after the PF's ACK, want PFACK and PFU released", got)
	}
	if vb.Read32(tVFMAILBOX)&tMbxPFACK != 0 {
		t.Fatal("PFACK did not clear on read")
	}
	// PF -> VF: STS; the VF acks.
	bar.Write32(tPFMAILBOX+4*v, tPFMbxPFU)
	bar.Write32(tPFMBMEM+64*v, 0x80000008)
	bar.Write32(tPFMAILBOX+4*v, tPFMbxSTS)
	if vb.Read32(tVFMAILBOX)&tMbxPFSTS == 0 {
		t.Fatal("no PFSTS")
	}
	if vb.Read32(tVFMBMEM) != 0x80000008 {
		t.Fatal("VFMBMEM does not alias PFMBMEM")
	}
	vb.Write32(tVFMAILBOX, tMbxACK)
	if got := bar.Read32(tPFMBICR + 4); got != 1<<(16+v%16) {
		t.Fatalf("PFMBICR(1) = %#x, want VFACK", got)
	}
	// RVFU frees a lock a VF left behind.
	vb.Write32(tVFMAILBOX, tMbxVFU)
	bar.Write32(tPFMAILBOX+4*v, tPFMbxRVFU)
	if vb.Read32(tVFMAILBOX)&tMbxVFU != 0 {
		t.Fatal("RVFU did not clear VFU")
	}
}

func TestVFResetEvents(t *testing.T) {
	p, bar := sriovPF(t, 2)
	bar.Write32(tGCREXT, 3)
	vb := vfBar(t, p, 1)
	vb.Write32(tVFTDWBAL0, 0x5000)
	vb.Write32(tVFRDBAL0, 0x9000)
	vb.Write32(tVFCTRL, 1<<26)
	if got := bar.Read32(tPFVFLRE0); got != 1<<1 {
		t.Fatalf("PFVFLRE(0) = %#x after VF 1's VFCTRL.RST", got)
	}
	if vb.Read32(tVFRDBAL0) != 0 || vb.Read32(tVFTDWBAL0) != 0x5000 {
		t.Fatal("VF reset: ring base not cleared, or TDWBAL cleared (an FLR keeps it)")
	}
	bar.Write32(tPFVFLREC0, 1<<1)
	if bar.Read32(tPFVFLRE0) != 0 {
		t.Fatal("PFVFLREC did not clear PFVFLRE")
	}
	setBits(bar, tCTRLEXT, tPFRSTD)
	vb.Read32(tVFMAILBOX)
	if err := p.ResetVF(1); err != nil {
		t.Fatal(err)
	}
	if bar.Read32(tPFVFLRE0) != 1<<1 || vb.Read32(tVFMAILBOX)&tMbxRSTD == 0 {
		t.Fatal("PF-side VF reset: no PFVFLRE event or no RSTD")
	}
}

func TestVFLinksFollowsLink(t *testing.T) {
	p, bar := sriovPF(t, 1)
	vb := vfBar(t, p, 0)
	pollSet(t, bar, tLINKS, 1<<30)
	if vb.Read32(tVFLINKS)&(1<<30) == 0 {
		t.Fatal("VFLINKS down with the PF's link up")
	}
	p.FlapLink(100)
	if vb.Read32(tVFLINKS)&(1<<30) != 0 {
		t.Fatal("VFLINKS up during a flap")
	}
	pollSet(t, vb, tVFLINKS, 1<<30)
}
