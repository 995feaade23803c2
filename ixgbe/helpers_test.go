package ixgbe

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
)

// testBufs is a pool of packet buffers mapped into the simulator's IOMMU,
// as an application's buffer pool would be.
type testBufs struct {
	*hugepage.Pool
}

// newTestBufs maps n buffers of size bytes for pf's DMA. They are unmapped
// when the test ends, after p is stopped (the cleanup stops it first, so the
// NIC never holds an unmapped buffer).
func newTestBufs(t testing.TB, pf *sim.PF, p *Port, alloc *hugepage.IOVAAllocator, n, size int) testBufs {
	t.Helper()
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: size, Count: n},
		Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "ixgbe-test-bufs"},
		Domains: []hugepage.DMADomain{{Mapper: pf.DMA(), IOVA: alloc}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		if err := pool.Close(); err != nil {
			t.Errorf("buffer pool: %v", err)
		}
	})
	return testBufs{pool.Pool}
}

// rxBufs takes n buffers from the pool as ring.Bufs whose cookie is the
// buffer index.
func (b testBufs) rxBufs(t testing.TB, n int) []ring.Buf {
	t.Helper()
	idx := make([]uint32, n)
	if got := b.Get(idx); got != n {
		t.Fatalf("pool has %d free buffers, need %d", got, n)
	}
	out := make([]ring.Buf, n)
	for i, x := range idx {
		out[i] = ring.Buf{IOVA: b.IOVA(x), Len: uint32(b.BufSize()), Cookie: ring.Cookie(x)}
	}
	return out
}

// txSeg copies data into a fresh pool buffer and returns it as a segment,
// with the buffer index.
func (b testBufs) txSeg(t testing.TB, data []byte) (ring.Segment, uint32) {
	t.Helper()
	var idx [1]uint32
	if b.Get(idx[:]) != 1 {
		t.Fatal("buffer pool exhausted")
	}
	if len(data) > b.BufSize() {
		t.Fatalf("segment of %d bytes does not fit a %d-byte buffer", len(data), b.BufSize())
	}
	copy(b.Bytes(idx[0]), data)
	return ring.Segment{IOVA: b.IOVA(idx[0]), Len: uint32(len(data))}, idx[0]
}

// recorder is a wire endpoint that keeps copies of the frames it receives.
type recorder struct {
	mu     sync.Mutex
	frames [][]byte
}

func (r *recorder) Deliver(f []byte) {
	r.mu.Lock()
	r.frames = append(r.frames, append([]byte(nil), f...))
	r.mu.Unlock()
}

func (r *recorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.frames
	r.frames = nil
	return f
}

// stepUntil runs the simulator until cond holds, failing after many steps.
func stepUntil(t testing.TB, pf *sim.PF, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 10000; i++ {
		if cond() {
			return
		}
		pf.Step()
	}
	t.Fatalf("simulator never reached: %s", what)
}

// eachTxCompletion runs f as a subtest for each way the device reports
// TX completions: DD in descriptors and head write-back.
func eachTxCompletion(t *testing.T, f func(t *testing.T, headWB bool)) {
	for _, headWB := range []bool{false, true} {
		name := "descriptor-DD"
		if headWB {
			name = "head-write-back"
		}
		t.Run(name, func(t *testing.T) { f(t, headWB) })
	}
}

// harvestN steps the simulator and harvests until n completions arrived.
func harvestN(t testing.TB, pf *sim.PF, q *RxQueue, n int) []ring.RxDone {
	t.Helper()
	var out []ring.RxDone
	buf := make([]ring.RxDone, 64)
	stepUntil(t, pf, "RX completions", func() bool {
		k := q.Harvest(buf)
		out = append(out, buf[:k]...)
		return len(out) >= n
	})
	return out
}

// reclaimN steps the simulator and reclaims until n cookies came back.
func reclaimN(t testing.TB, pf *sim.PF, q *TxQueue, n int) []ring.Cookie {
	t.Helper()
	var out []ring.Cookie
	buf := make([]ring.Cookie, 64)
	stepUntil(t, pf, "TX completions", func() bool {
		k := q.Reclaim(buf)
		out = append(out, buf[:k]...)
		return len(out) >= n
	})
	return out
}

// Frame building, independent of sim/wire so that checksums are computed
// twice, by different code, on the two sides.

var (
	testSrcMAC = [6]byte{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01}
	testIPSrc  = [4]byte{10, 0, 0, 1}
	testIPDst  = [4]byte{10, 0, 0, 2}
)

// onesSum adds b to a ones'-complement running sum.
func onesSum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xFFFF + sum>>16
	}
	return uint16(sum)
}

func pseudoSum(src, dst [4]byte, proto uint8, length int) uint32 {
	s := onesSum(0, src[:])
	s = onesSum(s, dst[:])
	return s + uint32(proto) + uint32(length)
}

// ipv4Frame builds Ethernet/IPv4/<proto> with an L4 header of l4hdr bytes
// (ports at its start) and the payload; checksums are left zero.
func ipv4Frame(dst [6]byte, proto uint8, sport, dport uint16, l4hdr int, payload []byte) []byte {
	f := make([]byte, 14+20+l4hdr+len(payload))
	copy(f[0:6], dst[:])
	copy(f[6:12], testSrcMAC[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:16], testIPSrc[:])
	copy(ip[16:20], testIPDst[:])
	l4 := ip[20:]
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	if proto == 6 {
		binary.BigEndian.PutUint32(l4[4:], 1000) // sequence number
		l4[12] = byte(l4hdr/4) << 4
		l4[13] = 0x18 // PSH|ACK
		binary.BigEndian.PutUint16(l4[14:], 65535)
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	}
	copy(l4[l4hdr:], payload)
	return f
}

var (
	testIP6Src = [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}
	testIP6Dst = [16]byte{0x20, 0x01, 0x0d, 0xb8, 14: 0x02, 15: 0x07}
)

// ipv6Frame is ipv4Frame for IPv6 (no extension headers).
func ipv6Frame(dst [6]byte, proto uint8, sport, dport uint16, l4hdr int, payload []byte) []byte {
	v4 := ipv4Frame(dst, proto, sport, dport, l4hdr, payload)
	l4 := v4[14+20:]
	f := make([]byte, 14+40, 14+40+len(l4))
	copy(f, v4[:12])
	binary.BigEndian.PutUint16(f[12:], 0x86DD)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = proto
	ip[7] = 64
	copy(ip[8:24], testIP6Src[:])
	copy(ip[24:40], testIP6Dst[:])
	return append(f, l4...)
}

// pseudoSum6 is the IPv6 pseudo-header sum of an L4 segment.
func pseudoSum6(proto uint8, length int) uint32 {
	s := onesSum(0, testIP6Src[:])
	s = onesSum(s, testIP6Dst[:])
	return s + uint32(proto) + uint32(length)
}

// l4ChecksumOK6 verifies the L4 checksum of an untagged IPv6 frame.
func l4ChecksumOK6(f []byte) bool {
	ip := f[14:]
	l4 := ip[40 : 40+int(binary.BigEndian.Uint16(ip[4:]))]
	return fold(onesSum(pseudoSum6(ip[6], len(l4)), l4)) == 0xFFFF
}

func udpFrame(dst [6]byte, sport, dport uint16, payload []byte) []byte {
	return ipv4Frame(dst, 17, sport, dport, 8, payload)
}

func tcpFrame(dst [6]byte, sport, dport uint16, payload []byte) []byte {
	return ipv4Frame(dst, 6, sport, dport, 20, payload)
}

// fillChecksums computes the IPv4 and L4 checksums of an untagged frame.
func fillChecksums(f []byte) {
	ip := f[14:]
	binary.BigEndian.PutUint16(ip[10:], 0)
	binary.BigEndian.PutUint16(ip[10:], ^fold(onesSum(0, ip[:20])))
	l4 := ip[20:]
	off := 6
	if ip[9] == 6 {
		off = 16
	}
	binary.BigEndian.PutUint16(l4[off:], 0)
	var src, dst [4]byte
	copy(src[:], ip[12:16])
	copy(dst[:], ip[16:20])
	binary.BigEndian.PutUint16(l4[off:], ^fold(onesSum(pseudoSum(src, dst, ip[9], len(l4)), l4)))
}

// checksumsOK verifies the IPv4 header and L4 checksums of an untagged
// frame.
func checksumsOK(f []byte) (ipOK, l4OK bool) {
	ip := f[14:]
	ihl := int(ip[0]&0xF) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	ipOK = fold(onesSum(0, ip[:ihl])) == 0xFFFF
	var src, dst [4]byte
	copy(src[:], ip[12:16])
	copy(dst[:], ip[16:20])
	l4 := ip[ihl:total]
	l4OK = fold(onesSum(pseudoSum(src, dst, ip[9], len(l4)), l4)) == 0xFFFF
	return ipOK, l4OK
}

func payloadBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// txEnv is a port with a recorder on its wire and a buffer pool.
type txEnv struct {
	pf   *sim.PF
	p    *Port
	q    *TxQueue
	rec  *recorder
	bufs testBufs
}

func newTxEnv(t *testing.T, cfg Config) txEnv {
	pf, p, alloc := simPort(t, cfg)
	rec := &recorder{}
	pf.Attach(rec)
	return txEnv{pf: pf, p: p, q: p.TxQueue(0), rec: rec, bufs: newTestBufs(t, pf, p, alloc, 128, 2048)}
}
