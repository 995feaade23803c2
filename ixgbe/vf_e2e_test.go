package ixgbe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/linuxpf"
)

// End-to-end tests of the VF driver: OpenVF and the VF's queues against a
// simulated 82599 whose PF the host's Linux driver keeps (sim/linuxpf),
// both running free as they would on a host.

var (
	vfMAC0   = [6]byte{0x02, 0xAA, 0, 0, 0, 1}
	vfMAC1   = [6]byte{0x02, 0xBB, 0, 0, 0, 2}
	vfMACNew = [6]byte{0x02, 0xCC, 0, 0, 0, 3}
	wireMAC  = [6]byte{0x02, 0xEE, 0, 0, 0, 9}
)

// vfRig is a simulated 82599 whose PF the host's Linux driver keeps, its
// port cabled to a recorder; both the PF and the host run free.
type vfRig struct {
	t    *testing.T
	pf   *sim.PF
	host *linuxpf.Host
	wire *recorder
}

func newVFRig(t *testing.T, conf linuxpf.Config) *vfRig {
	t.Helper()
	pf := sim.NewPF(sim.DefaultOptions())
	t.Cleanup(func() { _ = pf.Close() })
	h, err := linuxpf.Start(pf, conf)
	if err != nil {
		t.Fatal(err)
	}
	r := &vfRig{t: t, pf: pf, host: h, wire: &recorder{}}
	pf.Attach(r.wire)
	h.Run()
	t.Cleanup(h.Stop)
	pf.Start()
	t.Cleanup(pf.Stop)
	return r
}

// onWire is how many frames the port sent since the last take.
func (r *vfRig) onWire() int {
	r.wire.mu.Lock()
	defer r.wire.mu.Unlock()
	return len(r.wire.frames)
}

func vfTestConfig() VFConfig {
	return VFConfig{RingMemory: hugepage.Options{PageSize: hugepage.Page4K}, LinkTimeout: 2 * time.Second,
		Logf: func(string, ...any) {}}
}

// testVF is an open VF with a buffer pool mapped in its own IOMMU domain.
type testVF struct {
	*VF
	dev  *sim.VF
	bufs *hugepage.DMAPool
}

// open opens VF i with cfg (IOVA and Logf filled in) and a pool of
// 2 KiB buffers in the VF's domain. It is closed when the test ends.
func (r *vfRig) open(i int, cfg VFConfig) (*testVF, error) {
	r.t.Helper()
	dev := r.pf.VF(i)
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		r.t.Fatal(err)
	}
	cfg.IOVA = alloc
	vf, err := OpenVF(dev, cfg)
	if err != nil {
		return nil, err
	}
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: 2048, Count: 1024},
		Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "vf-test-bufs"},
		Domains: []hugepage.DMADomain{{Mapper: dev.DMA(), IOVA: alloc}},
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() {
		if err := vf.Close(); err != nil {
			r.t.Errorf("VF %d Close: %v", i, err)
		}
		if err := pool.Close(); err != nil {
			r.t.Errorf("VF %d buffers: %v", i, err)
		}
	})
	return &testVF{VF: vf, dev: dev, bufs: pool}, nil
}

func (r *vfRig) mustOpen(i int, cfg VFConfig) *testVF {
	r.t.Helper()
	v, err := r.open(i, cfg)
	if err != nil {
		r.t.Fatalf("OpenVF %d: %v", i, err)
	}
	return v
}

// post gives RX queue 0 n buffers of the pool; their cookies are the
// buffer indexes.
func (v *testVF) post(t *testing.T, n int) []ring.Cookie {
	t.Helper()
	idx := make([]uint32, n)
	if v.bufs.Get(idx) != n {
		t.Fatal("buffer pool exhausted")
	}
	bufs := make([]ring.Buf, n)
	cookies := make([]ring.Cookie, n)
	for i, x := range idx {
		bufs[i] = ring.Buf{IOVA: v.bufs.Pool.IOVA(x), Len: uint32(v.bufs.BufSize()), Cookie: ring.Cookie(x)}
		cookies[i] = ring.Cookie(x)
	}
	if got := v.QueuePair(0).Rx().Post(bufs); got != n {
		t.Fatalf("posted %d of %d buffers", got, n)
	}
	return cookies
}

// send copies each frame into a pool buffer and submits it on TX queue 0.
func (v *testVF) send(t *testing.T, frames ...[]byte) []ring.Cookie {
	t.Helper()
	pkts := make([]ring.TxPkt, len(frames))
	var cookies []ring.Cookie
	for i, f := range frames {
		var idx [1]uint32
		if v.bufs.Get(idx[:]) != 1 {
			t.Fatal("buffer pool exhausted")
		}
		copy(v.bufs.Bytes(idx[0]), f)
		pkts[i] = ring.TxPkt{Segs: []ring.Segment{{IOVA: v.bufs.Pool.IOVA(idx[0]), Len: uint32(len(f))}}, Cookie: ring.Cookie(idx[0])}
		cookies = append(cookies, ring.Cookie(idx[0]))
	}
	if got := v.QueuePair(0).Tx().Submit(pkts); got != len(pkts) {
		t.Fatalf("submitted %d of %d packets", got, len(pkts))
	}
	return cookies
}

// receive harvests RX queue 0 until n frames arrived (each in one
// buffer) and returns copies of them.
func (v *testVF) receive(t *testing.T, n int) [][]byte {
	t.Helper()
	var out [][]byte
	done := make([]ring.RxDone, 64)
	eventually(t, "frames received on the VF", func() bool {
		k := v.QueuePair(0).Rx().Harvest(done)
		for _, d := range done[:k] {
			if !d.EOP() {
				t.Fatalf("a frame spans buffers")
			}
			out = append(out, slices.Clone(v.bufs.Bytes(uint32(d.Cookie))[:d.Len]))
			v.bufs.Put([]uint32{uint32(d.Cookie)})
		}
		return len(out) >= n
	})
	return out
}

// reclaim waits until n packets of TX queue 0 completed and returns their
// cookies' buffers to the pool.
func (v *testVF) reclaim(t *testing.T, n int) []ring.Cookie {
	t.Helper()
	var out []ring.Cookie
	done := make([]ring.Cookie, 64)
	eventually(t, "TX completions on the VF", func() bool {
		k := v.QueuePair(0).Tx().Reclaim(done)
		for _, c := range done[:k] {
			v.bufs.Put([]uint32{uint32(c)})
		}
		out = append(out, done[:k]...)
		return len(out) >= n
	})
	return out
}

// quiet checks that nothing arrives on RX queue 0 for a while.
func (v *testVF) quiet(t *testing.T, what string) {
	t.Helper()
	done := make([]ring.RxDone, 8)
	deadline := time.Now().Add(20 * time.Millisecond)
	for time.Now().Before(deadline) {
		if k := v.QueuePair(0).Rx().Harvest(done); k > 0 {
			t.Fatalf("%s: the VF received %d bytes", what, done[0].Len)
		}
		time.Sleep(time.Millisecond)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// ethFrame is a frame of n bytes from src to dst, its payload marked with
// seq.
func ethFrame(dst, src [6]byte, seq byte, n int) []byte {
	f := make([]byte, n)
	copy(f, dst[:])
	copy(f[6:], src[:])
	binary.BigEndian.PutUint16(f[12:], 0x88B5) // local experimental
	for i := 14; i < n; i++ {
		f[i] = seq + byte(i)
	}
	return f
}

// vlanFrame tags f with VLAN vid.
func vlanFrame(f []byte, vid uint16) []byte {
	out := make([]byte, 0, len(f)+4)
	out = append(out, f[:12]...)
	out = append(out, 0x81, 0x00, byte(vid>>8), byte(vid))
	return append(out, f[12:]...)
}

func hw(m [6]byte) net.HardwareAddr { return net.HardwareAddr(m[:]) }

// TestVFE2EAPINegotiation: against the host's Linux PF the VF gets the
// newest version the host accepts, and what that version allows.
func TestVFE2EAPINegotiation(t *testing.T) {
	for _, c := range []struct {
		name   string
		host   []linuxpf.API
		want   MailboxAPI
		queues int
	}{
		{"linux", nil, API14, 4},
		{"1.0-1.1", []linuxpf.API{linuxpf.API10, linuxpf.API11}, API11, 4},
		{"1.0", []linuxpf.API{linuxpf.API10}, API10, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newVFRig(t, linuxpf.Config{NumVFs: 2, APIs: c.host})
			_ = r.host.SetVFMAC(1, vfMAC1)
			v := r.mustOpen(1, vfTestConfig())
			info := v.Info()
			if info.API != c.want || info.MaxRxQueues != c.queues || info.MaxTxQueues != c.queues {
				t.Fatalf("Info %+v: want API %v and %d queues", info, c.want, c.queues)
			}
			if hi, _ := r.host.Info(1); int(hi.API) != int(c.want) || !hi.ClearToSend {
				t.Fatalf("host sees API %d, clear to send %v; want %d", hi.API, hi.ClearToSend, c.want)
			}
			if !bytes.Equal(v.MAC(), vfMAC1[:]) {
				t.Fatalf("MAC %s, want the host's %s", v.MAC(), hw(vfMAC1))
			}
			err := v.SetXcastMode(XcastMulti)
			if c.want < API12 {
				if err == nil || !strings.Contains(err.Error(), "needs 1.2") {
					t.Fatalf("xcast mode at API %v: %v", c.want, err)
				}
			} else if err != nil {
				t.Fatalf("xcast MULTI at API %v: %v", c.want, err)
			}
			if c.queues > 1 {
				if _, err := r.open(0, VFConfig{RxQueues: 8}); err == nil {
					t.Fatal("OpenVF with 8 RX queues under a host granting 4 succeeded")
				}
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		r := newVFRig(t, linuxpf.Config{NumVFs: 1, APIs: []linuxpf.API{linuxpf.API15}})
		_ = r.host.SetVFMAC(0, vfMAC0)
		_, err := r.open(0, vfTestConfig())
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "every mailbox API") {
			t.Fatalf("OpenVF against a host accepting none of our APIs: %v", err)
		}
	})
}

// TestVFE2EMACPolicy: the host's administrator assigned a MAC: the VF
// takes it; an untrusted VF asking for another is refused with the fix
// named; trusted, it is granted.
func TestVFE2EMACPolicy(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 2})
	_ = r.host.SetVFMAC(0, vfMAC0)

	// No MAC from the host and none configured: OpenVF says what to do.
	if _, err := r.open(1, vfTestConfig()); err == nil || !strings.Contains(err.Error(), "vf N mac") {
		t.Fatalf("OpenVF without any MAC: %v", err)
	}
	// No MAC from the host: the VF's own is accepted.
	cfg := vfTestConfig()
	cfg.MAC = hw(vfMAC1)
	v1 := r.mustOpen(1, cfg)
	if hi, _ := r.host.Info(1); hi.MAC != vfMAC1 || hi.AdminMAC {
		t.Fatalf("host has VF 1 at %x (admin %v), want %x", hi.MAC, hi.AdminMAC, vfMAC1)
	}
	_ = v1

	// An admin MAC and an untrusted VF asking for another.
	cfg.MAC = hw(vfMACNew)
	_, err := r.open(0, cfg)
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "ip link set PF vf N trust on") || !strings.Contains(err.Error(), hw(vfMAC0).String()) {
		t.Fatalf("untrusted VF asking for another MAC: %v; want a RefusedError naming trust on and the host's MAC", err)
	}
	v0 := r.mustOpen(0, vfTestConfig())
	if !bytes.Equal(v0.MAC(), vfMAC0[:]) || !bytes.Equal(v0.Info().PermanentMAC, vfMAC0[:]) {
		t.Fatalf("VF 0 MAC %s, want the host's %s", v0.MAC(), hw(vfMAC0))
	}
	if err := v0.SetMAC(hw(vfMACNew)); !errors.As(err, &re) || !strings.Contains(err.Error(), "trust on") {
		t.Fatalf("SetMAC on an untrusted VF: %v", err)
	}
	if !bytes.Equal(v0.MAC(), vfMAC0[:]) {
		t.Fatalf("MAC changed to %s after a refusal", v0.MAC())
	}

	// Trust on restarts the VF; after recovery the change is granted.
	if err := r.host.SetVFTrust(0, true); err != nil {
		t.Fatal(err)
	}
	recoverVF(t, v0.VF)
	if err := v0.SetMAC(hw(vfMACNew)); err != nil {
		t.Fatalf("SetMAC on a trusted VF: %v", err)
	}
	if hi, _ := r.host.Info(0); hi.MAC != vfMACNew {
		t.Fatalf("host has VF 0 at %x, want %x", hi.MAC, vfMACNew)
	}
	// Frames for the new address reach VF 0.
	v0.post(t, 4)
	f := ethFrame(vfMACNew, wireMAC, 1, 64)
	r.pf.Deliver(f)
	if got := v0.receive(t, 1); !bytes.Equal(got[0], f) {
		t.Fatal("frame for the new MAC differs")
	}
}

// recoverVF calls CheckReset until it has recovered from a reset.
func recoverVF(t *testing.T, v *VF) {
	t.Helper()
	eventually(t, "CheckReset to see the reset and recover", func() bool {
		seen, err := v.CheckReset(nil)
		return seen && err == nil
	})
}

// TestVFE2EMTU: SET_LPE under the 82599's rules as the Linux PF applies
// them: a jumbo VF needs a jumbo PF and API 1.1; then jumbo frames arrive.
func TestVFE2EMTU(t *testing.T) {
	t.Run("standard-PF", func(t *testing.T) {
		r := newVFRig(t, linuxpf.Config{NumVFs: 1})
		_ = r.host.SetVFMAC(0, vfMAC0)
		cfg := vfTestConfig()
		cfg.MTU = 9000
		_, err := r.open(0, cfg)
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "MTU 9000") || !strings.Contains(err.Error(), "ip link set PF mtu") {
			t.Fatalf("jumbo VF under a 1500-byte PF: %v", err)
		}
	})
	t.Run("jumbo-PF-API-1.0", func(t *testing.T) {
		r := newVFRig(t, linuxpf.Config{NumVFs: 1, MTU: 9000})
		_ = r.host.SetVFMAC(0, vfMAC0)
		cfg := vfTestConfig()
		cfg.APIs = []MailboxAPI{API10}
		var re *RefusedError
		if _, err := r.open(0, cfg); !errors.As(err, &re) || !strings.Contains(err.Error(), "1.1") {
			t.Fatalf("legacy VF under a jumbo PF: %v", err)
		}
	})
	t.Run("jumbo", func(t *testing.T) {
		r := newVFRig(t, linuxpf.Config{NumVFs: 1, MTU: 9000})
		_ = r.host.SetVFMAC(0, vfMAC0)
		cfg := vfTestConfig()
		cfg.MTU = 9000
		cfg.RxBufSize = 9 * 1024
		v := r.mustOpen(0, cfg)
		big, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
			Pool:    hugepage.PoolConfig{BufSize: 10240, Count: 8},
			Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "vf-jumbo"},
			Domains: []hugepage.DMADomain{{Mapper: v.dev.DMA(), IOVA: v.cfg.IOVA}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := v.Stop(); err != nil {
				t.Error(err)
			}
			_ = big.Close()
		}()
		if v.QueuePair(0).Rx().Post([]ring.Buf{{IOVA: big.Pool.IOVA(0), Len: 10240, Cookie: 7}}) != 1 {
			t.Fatal("post")
		}
		f := ethFrame(vfMAC0, wireMAC, 3, 9000+14)
		r.pf.Deliver(f)
		done := make([]ring.RxDone, 1)
		eventually(t, "a jumbo frame", func() bool { return v.QueuePair(0).Rx().Harvest(done) == 1 })
		if !done[0].EOP() || !bytes.Equal(big.Bytes(0)[:done[0].Len], f) {
			t.Fatalf("jumbo frame: %d bytes, EOP %v", done[0].Len, done[0].EOP())
		}
	})
}

// TestVFE2EFilters: multicast groups, VLANs and the xcast mode asked of
// the host, and what each lets through.
func TestVFE2EFilters(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 2})
	_ = r.host.SetVFMAC(0, vfMAC0)
	v := r.mustOpen(0, vfTestConfig())
	v.post(t, 32)

	group := net.HardwareAddr{0x01, 0x00, 0x5e, 0x01, 0x02, 0x03}
	other := [6]byte{0x01, 0x00, 0x5e, 0x7f, 0x7f, 0x7f}
	if err := v.SetMulticast([]net.HardwareAddr{group}); err != nil {
		t.Fatal(err)
	}
	hi, _ := r.host.Info(0)
	if len(hi.Multicast) != 1 || uint32(hi.Multicast[0]) != mtaVector(group, v.Info().MulticastFilterType) {
		t.Fatalf("host has multicast hashes %#x", hi.Multicast)
	}
	r.pf.Deliver(ethFrame(other, wireMAC, 1, 64))
	mc := ethFrame([6]byte(group), wireMAC, 2, 64)
	r.pf.Deliver(mc)
	if got := v.receive(t, 1); !bytes.Equal(got[0], mc) {
		t.Fatal("the VF received another group's frame, or not its own")
	}

	// VLANs: a tag the VF asked for arrives, another does not.
	if err := v.SetVLAN(100, true); err != nil {
		t.Fatal(err)
	}
	r.pf.Deliver(vlanFrame(ethFrame(vfMAC0, wireMAC, 3, 64), 200))
	tagged := vlanFrame(ethFrame(vfMAC0, wireMAC, 4, 64), 100)
	r.pf.Deliver(tagged)
	if got := v.receive(t, 1); !bytes.Equal(got[0], tagged) {
		t.Fatal("VLAN 100 frame differs (or VLAN 200 arrived)")
	}
	if err := v.SetVLAN(100, false); err != nil {
		t.Fatal(err)
	}
	r.pf.Deliver(tagged)
	v.quiet(t, "VLAN 100 removed")

	// All-multicast: an untrusted VF gets MULTI, and is told so.
	err := v.SetXcastMode(XcastAllMulti)
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "trust on") {
		t.Fatalf("ALLMULTI untrusted: %v; want a RefusedError naming trust on", err)
	}
	if hi, _ := r.host.Info(0); hi.Xcast != linuxpf.XcastMulti {
		t.Fatalf("host xcast %d", hi.Xcast)
	}
	if err := v.SetXcastMode(XcastPromisc); !errors.As(err, &re) {
		t.Fatalf("PROMISC on an 82599: %v", err)
	}
	_ = r.host.SetVFTrust(0, true)
	recoverVF(t, v.VF)
	v.post(t, 8)
	if err := v.SetXcastMode(XcastAllMulti); err != nil {
		t.Fatalf("ALLMULTI trusted: %v", err)
	}
	r.pf.Deliver(ethFrame(other, wireMAC, 5, 64))
	v.receive(t, 1)

	// A port VLAN set by the host: the VF's own VLAN requests are refused.
	_ = r.host.SetVFVLAN(0, 300, 0)
	if err := v.SetVLAN(5, true); !errors.As(err, &re) || !strings.Contains(err.Error(), "port VLAN") {
		t.Fatalf("SetVLAN under a port VLAN: %v", err)
	}
}

// TestVFE2ETraffic: frames for the VF's MAC land in the VF's own memory
// byte for byte, the VF's frames reach the wire byte for byte, other
// frames do not reach it, and nothing faults.
func TestVFE2ETraffic(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 2})
	_ = r.host.SetVFMAC(0, vfMAC0)
	_ = r.host.SetVFMAC(1, vfMAC1)
	v := r.mustOpen(0, vfTestConfig())
	v.post(t, 64)
	var in [][]byte
	for i := range 16 {
		f := ethFrame(vfMAC0, wireMAC, byte(i), 60+i*90)
		in = append(in, f)
		r.pf.Deliver(ethFrame(vfMAC1, wireMAC, byte(i), 64)) // VF 1's, not open
		r.pf.Deliver(f)
	}
	got := v.receive(t, len(in))
	for i := range in {
		if !bytes.Equal(got[i], in[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	v.quiet(t, "VF 1's frames")

	var out [][]byte
	for i := range 16 {
		out = append(out, ethFrame(wireMAC, vfMAC0, byte(100+i), 60+i*90))
	}
	v.send(t, out...)
	v.reclaim(t, len(out))
	eventually(t, "frames on the wire", func() bool { return r.onWire() >= len(out) })
	sent := r.wire.take()
	for i := range out {
		if !bytes.Equal(sent[i], out[i]) {
			t.Fatalf("frame %d on the wire differs", i)
		}
	}
	// A frame from another source is dropped by the host's anti-spoofing.
	v.send(t, ethFrame(wireMAC, vfMAC1, 7, 64))
	v.reclaim(t, 1)
	time.Sleep(5 * time.Millisecond)
	if f := r.wire.take(); len(f) != 0 {
		t.Fatalf("a spoofed frame reached the wire")
	}
	eventually(t, "VF statistics", func() bool {
		st := v.Stats()
		return st.RxPackets == 16 && st.TxPackets == 16
	})
	if n, _ := v.dev.IOMMU().Faults(); n != 0 {
		t.Fatalf("%d IOMMU faults in the VF's domain", n)
	}
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults in the PF's domain", c.IOMMUFaults)
	}
}

// TestVFE2EVFToVF: VF 1 to VF 0 stays inside the NIC.
func TestVFE2EVFToVF(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 2})
	_ = r.host.SetVFMAC(0, vfMAC0)
	_ = r.host.SetVFMAC(1, vfMAC1)
	a := r.mustOpen(0, vfTestConfig())
	b := r.mustOpen(1, vfTestConfig())
	a.post(t, 8)
	b.post(t, 8)
	ab := ethFrame(vfMAC0, vfMAC1, 1, 200)
	ba := ethFrame(vfMAC1, vfMAC0, 2, 300)
	b.send(t, ab)
	a.send(t, ba)
	if got := a.receive(t, 1); !bytes.Equal(got[0], ab) {
		t.Fatal("VF 1 -> VF 0 frame differs")
	}
	if got := b.receive(t, 1); !bytes.Equal(got[0], ba) {
		t.Fatal("VF 0 -> VF 1 frame differs")
	}
	a.reclaim(t, 1)
	b.reclaim(t, 1)
	if f := r.wire.take(); len(f) != 0 {
		t.Fatalf("%d VF-to-VF frames reached the wire", len(f))
	}
}

// TestVFE2EResetRecovery: the host resets the VF mid-traffic (its driver
// restarting the VF, or a function reset); CheckReset hands every posted
// buffer and unsent packet back exactly once, brings the VF up again with
// what it had asked for, and traffic flows again.
func TestVFE2EResetRecovery(t *testing.T) {
	for _, c := range []struct {
		name  string
		reset func(r *vfRig) error
	}{
		{"host-restarts-VF", func(r *vfRig) error { return r.host.ResetVF(0) }},
		{"function-reset", func(r *vfRig) error { return r.pf.ResetVF(0) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newVFRig(t, linuxpf.Config{NumVFs: 2})
			_ = r.host.SetVFMAC(0, vfMAC0)
			v := r.mustOpen(0, vfTestConfig())
			group := net.HardwareAddr{0x01, 0x00, 0x5e, 0x01, 0x02, 0x03}
			if err := v.SetMulticast([]net.HardwareAddr{group}); err != nil {
				t.Fatal(err)
			}
			if err := v.SetVLAN(100, true); err != nil {
				t.Fatal(err)
			}
			if seen, err := v.CheckReset(nil); seen || err != nil {
				t.Fatalf("CheckReset without a reset: %v, %v", seen, err)
			}
			posted := v.post(t, 64)
			for i := range 8 {
				r.pf.Deliver(ethFrame(vfMAC0, wireMAC, byte(i), 100))
			}
			v.receive(t, 8)
			// Packets submitted after the reset: a function reset stopped
			// the queue, so they come back unsent; the host's restart of
			// the VF leaves it running until CheckReset stops it.
			out := map[ring.Cookie]bool{}
			if err := c.reset(r); err != nil {
				t.Fatal(err)
			}
			for _, ck := range v.send(t, ethFrame(wireMAC, vfMAC0, 9, 100), ethFrame(wireMAC, vfMAC0, 10, 100)) {
				out[ck] = true
			}
			back := map[ring.Cookie]int{}
			var txBack []ring.Cookie
			eventually(t, "recovery", func() bool {
				seen, err := v.CheckReset(func(q int, rx, tx []ring.Cookie) {
					if q != 0 {
						t.Errorf("queue %d handed buffers back", q)
					}
					for _, ck := range rx {
						back[ck]++
					}
					txBack = append(txBack, tx...)
				})
				return seen && err == nil
			})
			// Every buffer posted and not harvested came back once.
			if len(back) != len(posted)-8 {
				t.Fatalf("%d RX buffers handed back, %d outstanding", len(back), len(posted)-8)
			}
			for ck, n := range back {
				if n != 1 {
					t.Fatalf("RX buffer %d handed back %d times", ck, n)
				}
				v.bufs.Put([]uint32{uint32(ck)})
			}
			for _, ck := range txBack {
				if !out[ck] {
					t.Fatalf("TX cookie %d handed back was never submitted", ck)
				}
				delete(out, ck)
				v.bufs.Put([]uint32{uint32(ck)})
			}
			// Those not handed back were sent before the queue stopped.
			if len(out) != 0 {
				v.reclaim(t, len(out))
			}
			if st := v.Stats(); st.Resets != 1 {
				t.Fatalf("Stats.Resets = %d, want 1", st.Resets)
			}
			if seen, err := v.CheckReset(nil); seen || err != nil {
				t.Fatalf("CheckReset after recovery: %v, %v", seen, err)
			}
			// Traffic again, with the filters asked for before.
			hi, _ := r.host.Info(0)
			if len(hi.Multicast) != 1 || !hi.ClearToSend || hi.API != linuxpf.API14 {
				t.Fatalf("host state after recovery: %+v", hi)
			}
			v.post(t, 16)
			in := []([]byte){ethFrame(vfMAC0, wireMAC, 20, 100), ethFrame([6]byte(group), wireMAC, 21, 100),
				vlanFrame(ethFrame(vfMAC0, wireMAC, 22, 100), 100)}
			for _, f := range in {
				r.pf.Deliver(f)
			}
			got := v.receive(t, len(in))
			for i := range in {
				if !bytes.Equal(got[i], in[i]) {
					t.Fatalf("frame %d after recovery differs", i)
				}
			}
			r.wire.take()
			f := ethFrame(wireMAC, vfMAC0, 30, 128)
			v.send(t, f)
			v.reclaim(t, 1)
			eventually(t, "a frame on the wire after recovery", func() bool { return r.onWire() > 0 })
			if sent := r.wire.take(); !bytes.Equal(sent[len(sent)-1], f) {
				t.Fatal("frame sent after recovery differs")
			}
			if n, _ := v.dev.IOMMU().Faults(); n != 0 {
				t.Fatalf("%d IOMMU faults", n)
			}
		})
	}
}

// TestVFE2ELink: the VF sees the port's link go down and come back, and
// the host's ping about it is not taken for a reset.
func TestVFE2ELink(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 1})
	_ = r.host.SetVFMAC(0, vfMAC0)
	v := r.mustOpen(0, vfTestConfig())
	if l := v.Link(); !l.Up || l.Speed != 10000 {
		t.Fatalf("link %v", l)
	}
	r.pf.SetLink(false)
	eventually(t, "link down", func() bool { return !v.Link().Up })
	// The host pings the VF about the change, with clear-to-send.
	eventually(t, "the host's ping", func() bool {
		hi, _ := r.host.Info(0)
		return hi.ClearToSend
	})
	time.Sleep(5 * time.Millisecond)
	if v.ResetPending() {
		t.Fatal("ResetPending after a link change")
	}
	if seen, err := v.CheckReset(nil); seen || err != nil {
		t.Fatalf("CheckReset after a link change: %v, %v", seen, err)
	}
	r.pf.SetLink(true)
	eventually(t, "link up", func() bool { return v.Link().Up })
	if seen, err := v.CheckReset(nil); seen || err != nil {
		t.Fatalf("CheckReset after the link came back: %v, %v", seen, err)
	}
	if st := v.Stats(); st.Resets != 0 {
		t.Fatalf("%d resets counted", st.Resets)
	}
}

// ownerDrains stops queue pair qp and takes its buffers back as the
// zero-copy engine does after ResetPending: posted RX buffers, no TX.
func (v *testVF) ownerDrains(t *testing.T, qp ring.QueuePair, posted int) {
	t.Helper()
	if err := errors.Join(qp.StopRx(), qp.StopTx()); err != nil {
		t.Fatal(err)
	}
	rx, _ := qp.DrainRx(nil)
	tx, _ := qp.DrainTx(nil)
	if len(rx) != posted || len(tx) != 0 {
		t.Fatalf("drained %d RX buffers (posted %d) and %d TX packets", len(rx), posted, len(tx))
	}
	for _, c := range rx {
		v.bufs.Put([]uint32{uint32(c)})
	}
}

// ownerRestarts starts queue pair qp again after a recovery and checks
// that a frame arrives.
func (v *testVF) ownerRestarts(t *testing.T, r *vfRig, qp ring.QueuePair) {
	t.Helper()
	if err := errors.Join(qp.StartRx(2048), qp.StartTx()); err != nil {
		t.Fatal(err)
	}
	v.post(t, 8)
	f := ethFrame(vfMAC0, wireMAC, 1, 300)
	r.pf.Deliver(f)
	if got := v.receive(t, 1); !bytes.Equal(got[0], f) {
		t.Fatal("frame after recovery differs")
	}
}

// TestVFE2EResetOwnerDrains: the path of an owner that takes its buffers
// back itself (the zero-copy engine): ResetPending sees the reset, the
// owner stops and drains the pair through ring.QueuePair, CheckReset
// brings the VF up with nothing to hand back and leaves the queues to the
// owner, who starts them; traffic flows.
func TestVFE2EResetOwnerDrains(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 1})
	_ = r.host.SetVFMAC(0, vfMAC0)
	v := r.mustOpen(0, vfTestConfig())
	var qp ring.QueuePair = v.QueuePair(0)
	if v.ResetPending() {
		t.Fatal("ResetPending without a reset")
	}
	posted := v.post(t, 32)
	if err := r.pf.ResetVF(0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ResetPending", v.ResetPending)
	v.ownerDrains(t, qp, len(posted))
	seen, err := v.CheckReset(func(q int, rx, tx []ring.Cookie) {
		t.Errorf("CheckReset handed back %d+%d buffers of queue %d the owner had drained", len(rx), len(tx), q)
	})
	if !seen || err != nil {
		t.Fatalf("CheckReset: %v, %v", seen, err)
	}
	if v.ResetPending() || v.Stats().Resets != 1 {
		t.Fatalf("after recovery: pending %v, resets %d", v.ResetPending(), v.Stats().Resets)
	}
	if got := v.QueuePair(0).Rx().Post([]ring.Buf{{IOVA: v.bufs.Pool.IOVA(0), Len: 2048}}); got != 0 {
		t.Fatal("CheckReset restarted a queue its owner had stopped")
	}
	v.ownerRestarts(t, r, qp)
}

// TestVFE2ERecoverBesideOwner: the two halves of a recovery on two
// goroutines, as the appliance runs them: the owner sees the reset
// (ResetPending), stops and drains its pair; Recover (another goroutine)
// refuses while a queue still runs, fails with the host silent (the
// queues stay stopped: StartRx refuses with ErrVFReset), and succeeds
// once the host answers again; the owner starts the pair and traffic
// flows.
func TestVFE2ERecoverBesideOwner(t *testing.T) {
	r := newVFRig(t, linuxpf.Config{NumVFs: 1})
	_ = r.host.SetVFMAC(0, vfMAC0)
	cfg := vfTestConfig()
	cfg.MailboxTimeout = 50 * time.Millisecond
	cfg.ResetTimeout = 50 * time.Millisecond
	v := r.mustOpen(0, cfg)
	var qp ring.QueuePair = v.QueuePair(0)
	if err := v.Recover(); err != nil {
		t.Fatalf("Recover without a reset: %v", err)
	}
	posted := v.post(t, 16)
	r.host.Stop()
	if err := r.pf.ResetVF(0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ResetPending", v.ResetPending)
	if err := v.Recover(); err == nil || !strings.Contains(err.Error(), "RX queue 0 still runs") {
		t.Fatalf("Recover with the owner's queues running: %v", err)
	}
	v.ownerDrains(t, qp, len(posted))
	for range 2 {
		var me *MailboxError
		var te *TimeoutError
		if err := v.Recover(); !errors.As(err, &me) && !errors.As(err, &te) {
			t.Fatalf("Recover with the host silent: %v, want a mailbox timeout", err)
		}
		if err := qp.StartRx(2048); !errors.Is(err, ErrVFReset) {
			t.Fatalf("StartRx before the VF is up: %v", err)
		}
	}
	r.host.Run()
	done := make(chan error)
	go func() { done <- v.Recover() }()
	if err := <-done; err != nil {
		t.Fatalf("Recover with the host back: %v", err)
	}
	if v.ResetPending() || v.Stats().Resets != 1 {
		t.Fatalf("after recovery: pending %v, resets %d", v.ResetPending(), v.Stats().Resets)
	}
	v.ownerRestarts(t, r, qp)
}
