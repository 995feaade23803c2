package linuxpf

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// A VF driver reduced to what the tests need, written from ixgbevf's
// vf.c/mbx.c and DPDK's ixgbe_vf.c: it touches only its VF's BAR, its
// configuration space and memory mapped in its own domain.

// VF register offsets (ixgbevf regs.h), written out here.
const (
	vVFCTRL    = 0x0000
	vVFMAILBOX = 0x02FC
	vVFMBMEM   = 0x0200
	vVFLINKS   = 0x0010
	vVFGPRC    = 0x101C
	vVFGPTC    = 0x201C

	mbREQ   = 1 << 0
	mbACK   = 1 << 1
	mbVFU   = 1 << 2
	mbPFSTS = 1 << 4
	mbPFACK = 1 << 5
	mbRSTI  = 1 << 6
	mbRSTD  = 1 << 7
)

func vRx(i int, r uint32) uint32 { return 0x1000 + 0x40*uint32(i) + r }
func vTx(i int, r uint32) uint32 { return 0x2000 + 0x40*uint32(i) + r }

type rig struct {
	t    *testing.T
	pf   *sim.PF
	host *Host
	mu   sync.Mutex
	wire [][]byte // frames the port sent
}

func newRig(t *testing.T, conf Config) *rig {
	t.Helper()
	o := sim.DefaultOptions()
	o.Address = "0000:03:00.0"
	pf := sim.NewPF(o)
	t.Cleanup(func() { _ = pf.Close() })
	h, err := Start(pf, conf)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, pf: pf, host: h}
	pf.Attach(wire.EndpointFunc(func(f []byte) {
		r.mu.Lock()
		r.wire = append(r.wire, append([]byte(nil), f...))
		r.mu.Unlock()
	}))
	for i := 0; i < 100 && pf.VF(0) != nil; i++ {
		pf.Step() // autonegotiation
	}
	return r
}

func (r *rig) sent() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wire
}

type testVF struct {
	t     *testing.T
	r     *rig
	vf    *sim.VF
	bar   vfio.BAR
	cache uint32 // PFSTS/PFACK/RSTD seen (they clear on read)
	mem   []byte // DMA memory mapped in the VF's domain at iova
	iova  uint64
}

func (r *rig) vf(i int) *testVF {
	r.t.Helper()
	vf := r.pf.VF(i)
	if vf == nil {
		r.t.Fatalf("no VF %d", i)
	}
	bar, err := vf.BAR(0)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := vfio.EnableBusMaster(vf.Config()); err != nil {
		r.t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = unix.Munmap(mem) })
	iova := uint64(0x1000_0000) // the same IOVA in every VF's domain
	if err := vf.DMA().MapDMA(iova, mem); err != nil {
		r.t.Fatal(err)
	}
	return &testVF{t: r.t, r: r, vf: vf, bar: bar, mem: mem, iova: iova}
}

func (d *testVF) mbx() uint32 {
	v := d.bar.Read32(vVFMAILBOX)
	d.cache |= v & (mbPFSTS | mbPFACK | mbRSTD)
	return v
}

// send is the legacy write: take VFU, flush the cached PFSTS/PFACK,
// write the words, REQ (dropping VFU), wait for PFACK. The host runs
// between polls (Step).
func (d *testVF) send(words ...uint32) bool {
	d.bar.Write32(vVFMAILBOX, mbVFU)
	if d.mbx()&mbVFU == 0 {
		d.t.Fatal("VF could not take the mailbox lock")
	}
	d.cache &^= mbPFSTS | mbPFACK
	for i, w := range words {
		d.bar.Write32(vVFMBMEM+4*uint32(i), w)
	}
	d.bar.Write32(vVFMAILBOX, mbREQ)
	for i := 0; i < 50; i++ {
		d.r.host.Step()
		d.mbx()
		if d.cache&mbPFACK != 0 {
			d.cache &^= mbPFACK
			return true
		}
	}
	return false
}

// recv waits for PFSTS, reads the buffer under VFU and acks.
func (d *testVF) recv() []uint32 {
	for i := 0; i < 50 && d.cache&mbPFSTS == 0; i++ {
		d.r.host.Step()
		d.mbx()
	}
	if d.cache&mbPFSTS == 0 {
		d.t.Fatal("no message from the PF")
	}
	d.cache &^= mbPFSTS
	d.bar.Write32(vVFMAILBOX, mbVFU)
	d.mbx()
	out := make([]uint32, 16)
	for i := range out {
		out[i] = d.bar.Read32(vVFMBMEM + 4*uint32(i))
	}
	d.bar.Write32(vVFMAILBOX, mbACK)
	return out
}

func (d *testVF) request(words ...uint32) []uint32 {
	d.t.Helper()
	if !d.send(words...) {
		d.t.Fatalf("request %#x: no PFACK", words[0])
	}
	return d.recv()
}

// reset is ixgbevf_reset_hw_vf: VFCTRL.RST, wait for RSTI/RSTD to clear,
// VF_RESET, the 4-word reply.
func (d *testVF) reset() []uint32 {
	d.t.Helper()
	d.bar.Write32(vVFCTRL, 1<<26)
	ok := false
	for i := 0; i < 200; i++ {
		if d.mbx()&(mbRSTI|mbRSTD) == 0 {
			ok = true
			break
		}
	}
	if !ok {
		d.t.Fatal("PF still in reset")
	}
	d.cache = 0
	return d.request(msgReset)[:4]
}

func mac2words(m [6]byte) (uint32, uint32) {
	return binary.LittleEndian.Uint32(m[:4]), uint32(binary.LittleEndian.Uint16(m[4:]))
}

// rxQueue sets up RX queue 0 with n 2 KiB buffers after the ring.
func (d *testVF) rxQueue(n int) {
	d.bar.Write32(vRx(0, 0x00), uint32(d.iova))
	d.bar.Write32(vRx(0, 0x04), uint32(d.iova>>32))
	d.bar.Write32(vRx(0, 0x08), 16*16)
	d.bar.Write32(vRx(0, 0x14), 2|1<<25) // 2 KiB, advanced one buffer
	for i := 0; i < 16; i++ {
		binary.LittleEndian.PutUint64(d.mem[16*i:], d.iova+0x10000+0x800*uint64(i))
		binary.LittleEndian.PutUint64(d.mem[16*i+8:], 0)
	}
	d.bar.Write32(vRx(0, 0x28), 1<<25)
	for i := 0; i < 100 && d.bar.Read32(vRx(0, 0x28))&(1<<25) == 0; i++ {
	}
	d.bar.Write32(vRx(0, 0x18), uint32(n))
}

// received returns the frames written to RX descriptors 0..n-1.
func (d *testVF) received() [][]byte {
	var out [][]byte
	for i := 0; i < 16; i++ {
		st := binary.LittleEndian.Uint32(d.mem[16*i+8:])
		if st&1 == 0 {
			break
		}
		n := binary.LittleEndian.Uint16(d.mem[16*i+12:])
		off := 0x10000 + 0x800*i
		out = append(out, append([]byte(nil), d.mem[off:off+int(n)]...))
	}
	return out
}

// transmit sends frame on TX queue 0 from buffer iova bufIOVA (the frame
// is copied to the VF's memory at the matching offset when bufIOVA is
// its own).
func (d *testVF) transmit(frame []byte, bufIOVA uint64) {
	ring := 0x8000
	if bufIOVA >= d.iova && bufIOVA < d.iova+uint64(len(d.mem)) {
		copy(d.mem[bufIOVA-d.iova:], frame)
	}
	d.bar.Write32(vTx(0, 0x00), uint32(d.iova+uint64(ring)))
	d.bar.Write32(vTx(0, 0x04), uint32((d.iova+uint64(ring))>>32))
	d.bar.Write32(vTx(0, 0x08), 8*16)
	d.bar.Write32(vTx(0, 0x28), 1<<25)
	for i := 0; i < 100 && d.bar.Read32(vTx(0, 0x28))&(1<<25) == 0; i++ {
	}
	tail := d.bar.Read32(vTx(0, 0x18))
	desc := d.mem[ring+16*int(tail):]
	binary.LittleEndian.PutUint64(desc, bufIOVA)
	cmd := uint32(len(frame)) | 3<<20 | 1<<29 | 1<<24 | 1<<25 | 1<<27 // data, DEXT, EOP, IFCS, RS
	binary.LittleEndian.PutUint32(desc[8:], cmd)
	binary.LittleEndian.PutUint32(desc[12:], uint32(len(frame))<<14)
	d.bar.Write32(vTx(0, 0x18), (tail+1)%8)
}

func frame(dst, src [6]byte, tag byte) []byte {
	f := make([]byte, 64)
	copy(f, dst[:])
	copy(f[6:], src[:])
	f[12], f[13] = 0x88, 0xB5 // local experimental ethertype
	for i := 14; i < len(f); i++ {
		f[i] = tag
	}
	return f
}

func contains(frames [][]byte, f []byte) bool {
	for _, x := range frames {
		if len(x) >= len(f) && bytes.Equal(x[:len(f)], f) {
			return true
		}
	}
	return false
}
