package sim

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/zcnet/zcnet/vfio"
)

// Conformance tests for receive pool selection (VMDq), written from the
// 82599 datasheet's description (7.10.3) and driving the model only as a
// driver would: register writes, descriptors, DMA memory.

// Virtualization registers as the datasheet's tables give them.
const (
	tPFVTCTL   = 0x051B0
	tPFVFRE    = 0x051E0 // + 4*n, pools 32n..32n+31
	tPFVFTE    = 0x08110
	tVMOLR     = 0x0F000 // PFVML2FLT, + 4*pool
	tMPSAR     = 0x0A600 // MPSAR_LO(n) = + 8*n, MPSAR_HI(n) = + 8*n + 4
	tPFVLVF    = 0x0F100
	tPFVLVFB   = 0x0F200
	tPFUTA     = 0x0F400
	tPSRTYPE   = 0x0EA00
	tMTQC      = 0x08120
	tPFVFSPOOF = 0x08200
	tPFDTXGSWC = 0x08220
	tVMECM     = 0x08790
	tSSVPC     = 0x08780
	tRXDDGPC   = 0x02F5C
	tRXLPBKGPC = 0x02F68
	tRXDLPBKGP = 0x02F74
	tRXDGPC    = 0x02F50
	tTXDGPC    = 0x087A0

	vtEna    = 1 << 0
	disDefPL = 1 << 29
	rplEn    = 1 << 30

	aupe  = 1 << 24
	rompe = 1 << 25
	rope  = 1 << 26
	bam   = 1 << 27
	mpe   = 1 << 28
)

// poolMAC is the address the tests give pool n.
func poolMAC(n int) [6]byte { return [6]byte{0x02, 0x00, 0x00, 0x00, 0x10, byte(n)} }

// vtQueue is an RX queue of a pool test: its own IOVA window, 2 KB
// buffers, every descriptor given to the NIC.
type vtQueue struct {
	t    testing.TB
	bar  vfio.BAR
	q, n int
	ring []byte
	bufs []byte
	next int
}

const vtRxIOVA = 0x4000_0000

func vtRxQueue(t testing.TB, p *PF, bar vfio.BAR, q int, srrctlExtra uint32) *vtQueue {
	t.Helper()
	v := &vtQueue{t: t, bar: bar, q: q, n: 32, ring: dmaMem(t, 4096), bufs: dmaMem(t, 32*2048)}
	ringIOVA := uint64(vtRxIOVA) + uint64(q)<<20
	bufIOVA := ringIOVA + 0x10000
	if err := p.DMA().MapDMA(ringIOVA, v.ring); err != nil {
		t.Fatal(err)
	}
	if err := p.DMA().MapDMA(bufIOVA, v.bufs); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < v.n; i++ {
		binary.LittleEndian.PutUint64(v.ring[16*i:], bufIOVA+uint64(2048*i))
	}
	bar.Write32(tRXCTRL, 1)
	bar.Write32(tRxq(q, 0x00), uint32(ringIOVA))
	bar.Write32(tRxq(q, 0x04), uint32(ringIOVA>>32))
	bar.Write32(tRxq(q, 0x08), uint32(16*v.n))
	bar.Write32(tRxq(q, 0x14), 2|1<<25|srrctlExtra)
	bar.Write32(tRxq(q, 0x10), 0)
	bar.Write32(tRxq(q, 0x18), 0)
	bar.Write32(tRxq(q, 0x28), 1<<25)
	pollSet(t, bar, tRxq(q, 0x28), 1<<25)
	return v
}

// give hands the NIC all descriptors (tail one behind head).
func (v *vtQueue) give() { v.bar.Write32(tRxq(v.q, 0x18), uint32((v.next+v.n-1)%v.n)) }

// frames returns the frames written since the last call, with the RSS
// hash each descriptor reports.
func (v *vtQueue) frames() (out [][]byte, hashes []uint32) {
	le := binary.LittleEndian
	for {
		d := v.ring[16*v.next:]
		if le.Uint32(d[8:])&1 == 0 {
			return out, hashes
		}
		n := int(le.Uint32(d[12:]) & 0xFFFF)
		out = append(out, append([]byte(nil), v.bufs[2048*v.next:2048*v.next+n]...))
		hashes = append(hashes, le.Uint32(d[4:]))
		le.PutUint64(d[8:], 0)
		v.next = (v.next + 1) % v.n
	}
}

// vtRig is a PF in VMDq mode with RX queues on the first queue of pools.
type vtRig struct {
	t   *testing.T
	p   *PF
	bar vfio.BAR
	qpp int
	rx  map[int]*vtQueue // by queue
}

// newVTRig enables virtualization with mrqe, replication on, the given
// default pool, receive enabled for every pool, FCTRL.BAM, and pools 0-3
// owning poolMAC(0..3) in RAR 1-4, each with AUPE|BAM. queues lists the
// RX queues to set up.
func newVTRig(t *testing.T, mrqe uint32, qpp, defPool int, queues ...int) *vtRig {
	p, bar := rxSetup(t, nil)
	r := &vtRig{t: t, p: p, bar: bar, qpp: qpp, rx: map[int]*vtQueue{}}
	bar.Write32(tMRQC, mrqe)
	bar.Write32(tPFVTCTL, vtEna|rplEn|uint32(defPool)<<7)
	bar.Write32(tPFVFRE, 0xFFFFFFFF)
	bar.Write32(tPFVFRE+4, 0xFFFFFFFF)
	bar.Write32(tFCTRL, 1<<10)
	for pool := 0; pool < 4; pool++ {
		r.setRAR(pool+1, poolMAC(pool), 1<<uint(pool))
		bar.Write32(tVMOLR+4*uint32(pool), aupe|bam)
	}
	bar.Write32(tVMOLR+4*uint32(defPool), aupe|bam)
	for _, q := range queues {
		r.rx[q] = vtRxQueue(t, p, bar, q, 0)
		r.rx[q].give()
	}
	return r
}

// setRAR writes receive address n with AV and its pool bitmap.
func (r *vtRig) setRAR(n int, mac [6]byte, pools uint64) {
	r.bar.Write32(tRAL+8*uint32(n), binary.LittleEndian.Uint32(mac[:4]))
	r.bar.Write32(tRAL+8*uint32(n)+4, uint32(binary.LittleEndian.Uint16(mac[4:]))|1<<31)
	r.bar.Write32(tMPSAR+8*uint32(n), uint32(pools))
	r.bar.Write32(tMPSAR+8*uint32(n)+4, uint32(pools>>32))
}

// deliver sends f from the wire and runs the engines.
func (r *vtRig) deliver(f []byte) {
	r.p.Deliver(f)
	r.p.Step()
}

// got returns how many frames each set-up queue received (queues with
// none are left out), checking every copy equals want.
func (r *vtRig) got(want []byte) map[int]int {
	r.t.Helper()
	out := map[int]int{}
	for q, v := range r.rx {
		fs, _ := v.frames()
		for _, f := range fs {
			if want != nil && string(f) != string(want) {
				r.t.Errorf("queue %d: received frame differs from the one sent", q)
			}
		}
		if len(fs) > 0 {
			out[q] = len(fs)
		}
	}
	return out
}

func sameCounts(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (r *vtRig) expect(what string, f []byte, want map[int]int) {
	r.t.Helper()
	r.deliver(f)
	if got := r.got(f); !sameCounts(got, want) {
		r.t.Errorf("%s: frames per queue %v, want %v", what, got, want)
	}
}

func TestPoolUnicastLandsInItsPool(t *testing.T) {
	// 64 pools of 2 queues (MRQE 1000b): pool p owns queues 2p, 2p+1.
	r := newVTRig(t, 0x8, 2, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	for pool := 0; pool < 4; pool++ {
		f := udpFrame(poolMAC(pool), 40+pool)
		r.expect(fmt.Sprintf("unicast to pool %d", pool), f, map[int]int{2 * pool: 1})
	}
	// An address in two pools' MPSAR reaches both, one copy each.
	shared := [6]byte{0x02, 0, 0, 0, 0x20, 1}
	r.setRAR(10, shared, 1<<1|1<<3)
	r.expect("unicast to a shared address", udpFrame(shared, 10), map[int]int{2: 1, 6: 1})
	if v := r.bar.Read32(tRXDDGPC); v != 1 {
		t.Errorf("RXDDGPC = %d, want 1 (the second copy)", v)
	}
	if v := r.bar.Read32(tGPRC); v != 5 {
		t.Errorf("GPRC = %d, want 5: the MAC counts each frame once", v)
	}
	if v := r.bar.Read32(tRXDGPC); v != 6 {
		t.Errorf("RXDGPC = %d, want 6: the DMA counts each copy", v)
	}
}

func TestPoolBroadcastReplication(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	r.bar.Write32(tVMOLR+4*2, aupe) // pool 2 refuses broadcast
	b := udpFrame(bcastMAC, 20)
	r.expect("broadcast", b, map[int]int{0: 1, 2: 1, 6: 1, 8: 1})
	if v := r.bar.Read32(tBPRC); v != 1 {
		t.Errorf("BPRC = %d, want 1", v)
	}
	if v := r.bar.Read32(tRXDDGPC); v != 3 {
		t.Errorf("RXDDGPC = %d, want 3 (copies beyond the first)", v)
	}
	// Without PFVTCTL.Rpl_En a broadcast goes to the default pool only.
	r.bar.Write32(tPFVTCTL, vtEna|4<<7)
	r.expect("broadcast, replication off", b, map[int]int{8: 1})
	// Unicast still reaches its own pool, and only one: an address two
	// pools share goes to the lower one.
	u := udpFrame(poolMAC(3), 20)
	r.expect("unicast, replication off", u, map[int]int{6: 1})
	shared := [6]byte{0x02, 0, 0, 0, 0x20, 1}
	r.setRAR(10, shared, 1<<1|1<<3)
	r.expect("shared unicast, replication off", udpFrame(shared, 8), map[int]int{2: 1})
}

func TestPoolMulticast(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	g1 := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x01, 0x01}
	g2 := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x02, 0x02}
	g3 := [6]byte{0x01, 0x00, 0x5e, 0x00, 0x03, 0x03}
	// MTA bit for g1 (MCSTCTRL.MO = 0: DA bits 47:36), hash filter on.
	h := (uint32(g1[4]) | uint32(g1[5])<<8) >> 4
	r.bar.Write32(tMTA+4*(h>>5), 1<<(h&31))
	r.bar.Write32(tMCSTCTRL, 1<<2)
	r.bar.Write32(tVMOLR+4*1, aupe|bam|rompe)
	r.bar.Write32(tVMOLR+4*2, aupe|bam|mpe)
	// g1 hits the MTA: pool 1 (ROMPE) and pool 2 (MPE).
	r.expect("MTA multicast", udpFrame(g1, 8), map[int]int{2: 1, 4: 1})
	// g2 misses the MTA: only the multicast promiscuous pool, although
	// FCTRL.MPE is clear.
	r.expect("unhashed multicast", udpFrame(g2, 8), map[int]int{4: 1})
	// g3 is an exact filter of pool 3: pool 3 and the MPE pool, not the
	// hash pool.
	r.setRAR(12, g3, 1<<3)
	h3 := (uint32(g3[4]) | uint32(g3[5])<<8) >> 4
	r.bar.Write32(tMTA+4*(h3>>5), r.bar.Read32(tMTA+4*(h3>>5))|1<<(h3&31))
	r.expect("exact multicast", udpFrame(g3, 8), map[int]int{6: 1, 4: 1})
	// No pool takes g2 once pool 2 leaves MPE; it does not pass the
	// address filters at all then.
	r.bar.Write32(tVMOLR+4*2, aupe|bam)
	before := r.p.Counters().RxFiltered
	r.expect("multicast nobody takes", udpFrame(g2, 8), map[int]int{})
	if r.p.Counters().RxFiltered != before+1 {
		t.Error("an unwanted multicast was not counted as filtered")
	}
}

func TestPoolUnicastHashROPE(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	other := [6]byte{0x02, 0x77, 0x66, 0x55, 0x44, 0x33}
	h := (uint32(other[4]) | uint32(other[5])<<8) >> 4
	r.bar.Write32(tPFUTA+4*(h>>5), 1<<(h&31))
	r.bar.Write32(tMCSTCTRL, 1<<2)
	r.bar.Write32(tVMOLR+4*3, aupe|bam|rope)
	r.expect("UTA unicast", udpFrame(other, 8), map[int]int{6: 1})
}

func TestPoolDefaultPool(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	stranger := [6]byte{0x02, 0x42, 0x42, 0x42, 0x42, 0x42}
	// Not for this port at all: the address filters drop it.
	r.expect("unknown unicast", udpFrame(stranger, 8), map[int]int{})
	// An exact filter with no pool bits: the default pool (4, queue 8).
	r.setRAR(20, stranger, 0)
	r.expect("exact match without pools", udpFrame(stranger, 8), map[int]int{8: 1})
	// Unicast promiscuous: the default pool takes what no pool matched.
	r.setRAR(20, stranger, 0)
	r.bar.Write32(tRAL+8*20+4, 0) // AV off
	r.bar.Write32(tFCTRL, 1<<10|1<<9)
	r.expect("promiscuous unicast", udpFrame(stranger, 8), map[int]int{8: 1})
	// DIS_DEFPL: dropped and counted, after the MAC counted it.
	r.bar.Write32(tPFVTCTL, vtEna|rplEn|4<<7|disDefPL)
	_ = r.bar.Read32(tGPRC)
	r.expect("no pool, default pool disabled", udpFrame(stranger, 8), map[int]int{})
	if c := r.p.Counters(); c.RxNoPool != 1 {
		t.Errorf("RxNoPool = %d, want 1", c.RxNoPool)
	}
	if v := r.bar.Read32(tGPRC); v != 1 {
		t.Errorf("GPRC = %d, want 1", v)
	}
	// Frames for a pool still arrive.
	r.expect("unicast with DIS_DEFPL", udpFrame(poolMAC(1), 8), map[int]int{2: 1})
	// The default pool moves with DEF_PL.
	r.bar.Write32(tPFVTCTL, vtEna|rplEn|3<<7)
	r.expect("default pool 3", udpFrame(stranger, 8), map[int]int{6: 1})
}

func TestPoolReceiveEnable(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	r.bar.Write32(tPFVFRE, 0xFFFFFFFF&^(1<<2))
	r.expect("unicast to a disabled pool", udpFrame(poolMAC(2), 8), map[int]int{})
	r.expect("broadcast skips the disabled pool", udpFrame(bcastMAC, 8), map[int]int{0: 1, 2: 1, 6: 1, 8: 1})
	if c := r.p.Counters(); c.RxPoolOff != 2 {
		t.Errorf("RxPoolOff = %d, want 2", c.RxPoolOff)
	}
	// The default pool is a pool like the others.
	r.bar.Write32(tPFVFRE, 0xFFFFFFFF&^(1<<4))
	r.bar.Write32(tFCTRL, 1<<10|1<<9)
	r.expect("default pool disabled", udpFrame([6]byte{2, 9, 9, 9, 9, 9}, 8), map[int]int{})
	// Reset value: no pool receives.
	r.bar.Write32(tPFVFRE, 0)
	r.bar.Write32(tPFVFRE+4, 0)
	r.expect("PFVFRE clear", udpFrame(poolMAC(0), 8), map[int]int{})
}

func TestPoolVLANFilter(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	r.bar.Write32(tVLNCTRL, r.bar.Read32(tVLNCTRL)|1<<30) // VFE
	for _, vid := range []uint32{100, 200} {
		r.bar.Write32(tVFTA+4*(vid>>5), r.bar.Read32(tVFTA+4*(vid>>5))|1<<(vid&31))
	}
	r.bar.Write32(tPFVLVF, 1<<31|100)
	r.bar.Write32(tPFVLVFB, 1<<1|1<<3) // VLAN 100: pools 1 and 3
	tagged := func(dst [6]byte, vid int) []byte {
		return buildFrame(frameSpec{dst: dst, src: peerMAC, vlan: vid, srcIP: ip4a, dstIP: ip4b, proto: 17, sport: 1, dport: 2, payload: 8})
	}
	r.expect("VLAN 100 to pool 1", tagged(poolMAC(1), 100), map[int]int{2: 1})
	r.expect("VLAN 100 to pool 2 (not a member)", tagged(poolMAC(2), 100), map[int]int{8: 1})
	r.expect("VLAN 200 (no pool filter) to pool 1", tagged(poolMAC(1), 200), map[int]int{8: 1})
	r.expect("VLAN 300 (not in VFTA)", tagged(poolMAC(1), 300), map[int]int{})
	r.expect("broadcast on VLAN 100", tagged(bcastMAC, 100), map[int]int{2: 1, 6: 1})
	// Untagged frames need AUPE.
	r.bar.Write32(tVMOLR+4*0, bam)
	r.expect("untagged to pool 0 without AUPE", udpFrame(poolMAC(0), 8), map[int]int{8: 1})
	r.expect("untagged to pool 1", udpFrame(poolMAC(1), 8), map[int]int{2: 1})
}

func TestPoolVTDisabledIgnoresPools(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 2, 4, 6, 8)
	r.bar.Write32(tPFVTCTL, 0)
	r.bar.Write32(tMRQC, 0)
	r.expect("unicast to pool 3's MAC, VT off", udpFrame(poolMAC(3), 8), map[int]int{0: 1})
	r.expect("broadcast, VT off", udpFrame(bcastMAC, 8), map[int]int{0: 1})
}

// poolRSS sends the Microsoft RSS vectors (TCP) to pool's MAC and checks
// each lands on pool*qpp + (RETA entry masked to the pool's RQPL).
func poolRSS(t *testing.T, mrqe uint32, qpp, pool int, rqpl uint32, wantQueues int) {
	queues := make([]int, 0, 2*qpp)
	for q := pool * qpp; q < (pool+1)*qpp; q++ {
		queues = append(queues, q)
	}
	queues = append(queues, 0) // pool 0's first queue, which must get nothing
	r := newVTRig(t, mrqe|1<<16|1<<21, qpp, 0, queues...)
	r.setRAR(30, poolMAC(pool), 1<<uint(pool))
	r.bar.Write32(tVMOLR+4*uint32(pool), aupe|bam)
	for i := 0; i < 10; i++ {
		r.bar.Write32(tRSSRK+4*uint32(i), binary.LittleEndian.Uint32(msRSSKey[4*i:]))
	}
	for i := uint32(0); i < 32; i++ { // entry n holds n mod 16
		e := 4 * i
		r.bar.Write32(tRETA+4*i, (e&15)|(e+1)&15<<8|(e+2)&15<<16|(e+3)&15<<24)
	}
	r.bar.Write32(tPSRTYPE+4*uint32(pool), rqpl<<29)
	r.bar.Write32(tRXCSUM, 1<<13)
	seen := map[int]bool{}
	for _, v := range msRSSVectors {
		f := buildFrame(frameSpec{dst: poolMAC(pool), src: peerMAC, vlan: -1, srcIP: netip.MustParseAddr(v.src),
			dstIP: netip.MustParseAddr(v.dst), proto: 6, sport: v.sport, dport: v.dport, payload: 4})
		r.deliver(f)
		entry := int(v.withL4 & 0x7F & 15)
		want := pool*qpp + entry&(wantQueues-1)
		got := r.got(f)
		if !sameCounts(got, map[int]int{want: 1}) {
			t.Errorf("hash %#x (RETA entry %d): frames per queue %v, want queue %d", v.withL4, entry, got, want)
		}
		seen[want] = true
	}
	if len(seen) != wantQueues {
		t.Errorf("the vectors spread over %d queues, want %d (test vectors too few?)", len(seen), wantQueues)
	}
}

func TestPoolRSS32x4(t *testing.T) {
	t.Run("RQPL=2", func(t *testing.T) { poolRSS(t, 0xA, 4, 5, 2, 4) })
	t.Run("RQPL=1", func(t *testing.T) { poolRSS(t, 0xA, 4, 5, 1, 2) })
	t.Run("RQPL=0", func(t *testing.T) { poolRSS(t, 0xA, 4, 5, 0, 1) })
}

func TestPoolRSS64x2(t *testing.T) {
	t.Run("RQPL=1", func(t *testing.T) { poolRSS(t, 0xB, 2, 40, 1, 2) })
	t.Run("RQPL=2 capped at 2 queues", func(t *testing.T) { poolRSS(t, 0xB, 2, 40, 2, 2) })
}

func TestPoolCopiesWaitAndDropPerCopy(t *testing.T) {
	r := newVTRig(t, 0x8, 2, 4, 0, 4)
	// Pool 1's queue 2 has no descriptors yet and no DROP_EN: a broadcast
	// for pools 0, 1, 2 (queue 4) waits at the head of the packet buffer
	// after pool 0's copy, and later copies are not repeated.
	r.bar.Write32(0x02300, 1<<16) // RQSMR(0): queue 2 → counter set 1
	r.bar.Write32(0x02304, 2<<16) // RQSMR(1): queue 6 → counter set 2
	q2 := vtRxQueue(t, r.p, r.bar, 2, 0)
	r.rx[2] = q2
	r.bar.Write32(tVMOLR+4*3, aupe) // pool 3 and 4 refuse broadcast
	r.bar.Write32(tVMOLR+4*4, aupe)
	b := udpFrame(bcastMAC, 8)
	r.deliver(b)
	r.p.Step()
	if got := r.got(b); !sameCounts(got, map[int]int{0: 1}) {
		t.Fatalf("while pool 1 has no descriptors: frames per queue %v, want only queue 0", got)
	}
	if v := r.bar.Read32(tRNBC0); v != 1 {
		t.Errorf("RNBC = %d, want 1", v)
	}
	q2.give()
	r.p.Step()
	if got := r.got(b); !sameCounts(got, map[int]int{2: 1, 4: 1}) {
		t.Errorf("after descriptors arrive: frames per queue %v, want queues 2 and 4 once", got)
	}
	// With DROP_EN, a copy that finds no descriptor is dropped and counted
	// on its queue; the others go on.
	q6 := vtRxQueue(t, r.p, r.bar, 6, 1<<28)
	r.rx[6] = q6
	r.bar.Write32(tVMOLR+4*3, aupe|bam)
	r.deliver(b)
	if got := r.got(b); !sameCounts(got, map[int]int{0: 1, 2: 1, 4: 1}) {
		t.Errorf("with DROP_EN on pool 3's queue: frames per queue %v", got)
	}
	if v := r.bar.Read32(tQPRDC0 + 0x40*2); v != 1 {
		t.Errorf("QPRDC(2) = %d, want 1: pool 3's copy dropped", v)
	}
	if v := r.bar.Read32(tQPRC0 + 0x40*1); v != 2 {
		t.Errorf("QPRC(1) = %d, want 2: both copies for queue 2", v)
	}
}
