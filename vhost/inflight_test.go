package vhost_test

import (
	"encoding/binary"
	"net"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// inflightFrontend connects to path and negotiates protocol features
// proto with REPLY_ACK, so that every refusal is seen.
func inflightFrontend(t *testing.T, path string, proto uint64) *guest.Frontend {
	t.Helper()
	fe := rawFrontend(t, path)
	if _, err := fe.U64(vhost.ReqGetFeatures); err != nil {
		t.Fatal(err)
	}
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(proto|vhost.ProtoFReplyAck)); err != nil {
		t.Fatal(err)
	}
	fe.EnableReplyAck(true)
	return fe
}

// getInflight sends GET_INFLIGHT_FD and returns the reply and the
// descriptor it carried (-1: none), closed when the test ends.
func getInflight(t *testing.T, fe *guest.Frontend, nq, qs uint16) (vhost.InflightDesc, int) {
	t.Helper()
	p, fds, err := fe.RequestFDs(vhost.ReqGetInflightFD, vhost.EncodeInflight(vhost.InflightDesc{NumQueues: nq, QueueSize: qs}))
	if err != nil {
		t.Fatalf("GET_INFLIGHT_FD %d queues of %d: %v", nq, qs, err)
	}
	t.Cleanup(func() { closeInflightFDs(fds) })
	d, err := vhost.DecodeInflight(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) > 1 || (len(fds) == 1) != (d.MmapSize != 0) {
		t.Fatalf("GET_INFLIGHT_FD: size %d with %d descriptors", d.MmapSize, len(fds))
	}
	if len(fds) == 0 {
		return d, -1
	}
	return d, fds[0]
}

func closeInflightFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func TestInflightGetFD(t *testing.T) {
	// One queue pair and the control queue: 3 virtqueues.
	s := vhosttest.Serve(t, vhost.Config{})
	fe := inflightFrontend(t, s.Path, vhost.ProtoFInflightShmfd)
	d, fd := getInflight(t, fe, 3, 256)
	// 16-byte header and 16 bytes per descriptor, each queue's region
	// 64-byte aligned: 3 * 4160.
	if want := uint64(3 * 4160); d.MmapSize != want || d.MmapOffset != 0 || d.NumQueues != 3 || d.QueueSize != 256 {
		t.Fatalf("GET_INFLIGHT_FD reply %+v, want size %d offset 0", d, want)
	}
	if d.MmapSize != vhost.InflightBytes(3, 256) {
		t.Fatalf("InflightBytes(3, 256) = %d, the reply says %d", vhost.InflightBytes(3, 256), d.MmapSize)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || uint64(st.Size) != d.MmapSize {
		t.Fatalf("the buffer's file has %d bytes (%v), want %d", st.Size, err, d.MmapSize)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_GROW) != unix.F_SEAL_SHRINK|unix.F_SEAL_GROW {
		t.Fatalf("the buffer's seals are %#x (%v): it could be resized under a mapping", seals, err)
	}
	m, err := unix.Mmap(fd, 0, int(d.MmapSize), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	for i, b := range m {
		if b != 0 {
			t.Fatalf("byte %d of a new buffer is %#x, want 0", i, b)
		}
	}
	// Shapes the device cannot have: no buffer (mmap_size 0, no fd).
	for _, c := range []struct{ nq, qs uint16 }{{0, 256}, {4, 256}, {3, 0}, {3, 300}, {1, 1 << 15}} {
		d, fd := getInflight(t, fe, c.nq, c.qs)
		if c.nq == 1 && c.qs == 1<<15 {
			// The largest ring is fine: 16 + 32768*16 bytes, aligned.
			if fd < 0 || d.MmapSize != 16+(1<<19)+48 {
				t.Fatalf("GET_INFLIGHT_FD 1 queue of 32768: %+v fd %d", d, fd)
			}
			continue
		}
		if fd >= 0 || d.MmapSize != 0 {
			t.Fatalf("GET_INFLIGHT_FD %d queues of %d: got a buffer %+v", c.nq, c.qs, d)
		}
	}
	// Without the protocol feature: no buffer either.
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFReplyAck)); err != nil {
		t.Fatal(err)
	}
	if d, fd := getInflight(t, fe, 3, 256); fd >= 0 || d.MmapSize != 0 {
		t.Fatalf("GET_INFLIGHT_FD without INFLIGHT_SHMFD negotiated gave a buffer %+v", d)
	}
}

// TestInflightOfferedByDefault: split and packed rings both track
// inflight chains, and a front end that never sends SET_INFLIGHT_FD pays
// nothing for it, so the feature is offered unless a port opts out.
func TestInflightOfferedByDefault(t *testing.T) {
	if vhost.DefaultProtocolFeatures&vhost.ProtoFInflightShmfd == 0 {
		t.Fatal("INFLIGHT_SHMFD is not a default protocol feature")
	}
	s := vhosttest.Serve(t, vhost.Config{})
	fe := rawFrontend(t, s.Path)
	if p, err := fe.U64(vhost.ReqGetProtocolFeatures); err != nil || p&vhost.ProtoFInflightShmfd == 0 {
		t.Fatalf("GET_PROTOCOL_FEATURES %#x (%v): no INFLIGHT_SHMFD", p, err)
	}
}

// sealedMemfd is a memfd of size bytes sealed against resizing.
func sealedMemfd(t *testing.T, size int64, seals int) int {
	t.Helper()
	fd, err := unix.MemfdCreate("zcnet-test-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func TestInflightSetRefused(t *testing.T) {
	cfg, refusals := withRefusalLog(vhost.Config{})
	s := vhosttest.Serve(t, cfg)
	fe := inflightFrontend(t, s.Path, vhost.ProtoFInflightShmfd)
	good := vhost.InflightDesc{MmapSize: vhost.InflightBytes(3, 256), NumQueues: 3, QueueSize: 256}
	shrink := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	fd := sealedMemfd(t, int64(good.MmapSize), shrink)
	big := sealedMemfd(t, 1<<20, shrink)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer closeInflightFDs(pipe[:])
	with := func(f func(d *vhost.InflightDesc)) []byte {
		d := good
		f(&d)
		return vhost.EncodeInflight(d)
	}
	set := func(p []byte, fds ...int) error {
		_, err := fe.Request(vhost.ReqSetInflightFD, p, fds...)
		return err
	}
	for _, c := range []struct {
		name    string
		payload []byte
		fds     []int
		want    string
	}{
		{"size-too-small", with(func(d *vhost.InflightDesc) { d.MmapSize-- }), []int{fd}, "need"},
		{"size-zero", with(func(d *vhost.InflightDesc) { d.MmapSize = 0 }), []int{fd}, "mmap_size 0"},
		{"size-huge", with(func(d *vhost.InflightDesc) { d.MmapSize = 1 << 62 }), []int{fd}, "mmap_size"},
		{"offset-misaligned", with(func(d *vhost.InflightDesc) { d.MmapOffset = 8 }), []int{big}, "mmap_offset"},
		{"offset-past-file", with(func(d *vhost.InflightDesc) { d.MmapOffset = 4096 }), []int{fd}, "shorter than"},
		{"offset-wraps", with(func(d *vhost.InflightDesc) { d.MmapOffset = ^uint64(0) &^ 63 }), []int{big}, "mmap_offset"},
		{"file-too-small", vhost.EncodeInflight(good), []int{sealedMemfd(t, 4096, shrink)}, "shorter than"},
		{"unsealed-memfd", vhost.EncodeInflight(good), []int{sealedMemfd(t, 1<<20, 0)}, "seal"},
		{"pipe", vhost.EncodeInflight(good), []int{pipe[0]}, "pipe"},
		{"no-fd", vhost.EncodeInflight(good), nil, "descriptors"},
		{"two-fds", vhost.EncodeInflight(good), []int{fd, big}, "descriptors"},
		{"no-queues", with(func(d *vhost.InflightDesc) { d.NumQueues = 0 }), []int{fd}, "num_queues 0"},
		{"too-many-queues", with(func(d *vhost.InflightDesc) { d.NumQueues = 4; d.MmapSize = 1 << 20 }), []int{big}, "num_queues 4"},
		{"queue-size-not-power-of-two", with(func(d *vhost.InflightDesc) { d.QueueSize = 100 }), []int{big}, "queue_size 100"},
		{"short-payload", vhost.EncodeInflight(good)[:20], []int{fd}, "bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			refusals.refused(t, set(c.payload, c.fds...), c.want)
		})
	}
	if err := set(vhost.EncodeInflight(good), fd); err != nil {
		t.Fatalf("a good SET_INFLIGHT_FD after the refusals: %v", err)
	}
	// Offsets are fine when aligned and inside the file.
	if err := set(with(func(d *vhost.InflightDesc) { d.MmapOffset = 4096 }), big); err != nil {
		t.Fatalf("SET_INFLIGHT_FD at offset 4096 of a 1 MiB file: %v", err)
	}
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFReplyAck)); err != nil {
		t.Fatal(err)
	}
	refusals.refused(t, set(vhost.EncodeInflight(good), fd), "INFLIGHT_SHMFD protocol feature")
}

// txFrame is frame i of a test: its id in byte 14.
func txFrame(i int) []byte {
	f := make([]byte, 60)
	copy(f, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	f[14] = byte(i)
	return f
}

// popped is a chain the device took: its head and the id of the frame in it.
type popped struct {
	head uint16
	id   int
}

// popTx pops every chain of pair 0's transmit queue (at most max).
func popTx(t *testing.T, dev *vhost.Device, hdrLen, max int) []popped {
	t.Helper()
	dev.LockDataPath()
	defer dev.UnlockDataPath()
	q := dev.TxQueue(0)
	if q == nil {
		t.Fatal("no running transmit queue")
	}
	var out []popped
	c := vhost.Chain{Segs: make([]vhost.Segment, 0, 8)}
	for len(out) < max {
		ok, err := q.Pop(&c)
		if err != nil {
			t.Fatalf("Pop: %v", err)
		}
		if !ok {
			break
		}
		var b []byte
		for _, s := range c.Segs {
			b = append(b, s.Buf...)
		}
		if len(b) != hdrLen+60 {
			t.Fatalf("chain %d has %d bytes, want %d", c.Head, len(b), hdrLen+60)
		}
		out = append(out, popped{c.Head, int(b[hdrLen+14])})
	}
	return out
}

func pushTx(dev *vhost.Device, heads ...uint16) {
	dev.LockDataPath()
	defer dev.UnlockDataPath()
	q := dev.TxQueue(0)
	for _, h := range heads {
		q.Push(h, 0)
	}
	q.Flush()
}

// inflightSession is a guest with an inflight buffer, served by a first
// back end, which has taken n frames and completed some of them.
type inflightSession struct {
	g        *guest.Guest
	cfg      vhost.Config
	first    []popped
	unpopped []popped // taken by the first back end, then given back
	hdrLen   int
	packed   bool
	first1   *vhost.Device // the first back end
}

// restartSession sends frames 0..n-1, has the first back end pop them all
// and unpop the last unpop of them, push those at indexes done, then
// disconnects the guest, as a back end that crashes does.
func restartSession(t *testing.T, n, unpop int, done ...int) *inflightSession {
	t.Helper()
	return restartSessionWith(t, guest.Options{}, n, unpop, done...)
}

// restartSessionWith is restartSession with a guest of options opt (its
// Features with RING_PACKED: a packed ring).
func restartSessionWith(t *testing.T, opt guest.Options, n, unpop int, done ...int) *inflightSession {
	t.Helper()
	s := startSession(t, opt, n, unpop)
	var heads []uint16
	for _, i := range done {
		heads = append(heads, s.first[i].head)
	}
	pushTx(s.first1, heads...)
	if got := s.g.ReclaimTx(0); got != len(done) {
		t.Fatalf("the guest got %d transmit buffers back, want %d", got, len(done))
	}
	s.crash(t)
	return s
}

// startSession is restartSessionWith up to the unpop: nothing completed,
// the guest still attached to the first back end.
func startSession(t *testing.T, opt guest.Options, n, unpop int) *inflightSession {
	t.Helper()
	packed := opt.Features&vhost.FRingPacked != 0
	cfg := vhost.Config{Features: vhost.DefaultFeatures &^ vhost.NetFCtrlVQ}
	if packed {
		cfg.Features |= vhost.FRingPacked
	}
	opt.Inflight, opt.QueueSize = true, 64
	a := vhosttest.Serve(t, cfg)
	g, err := guest.Dial(a.Path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if g.Protocol&vhost.ProtoFInflightShmfd == 0 || g.InflightFD < 0 {
		t.Fatalf("no inflight buffer negotiated (protocol %#x, fd %d)", g.Protocol, g.InflightFD)
	}
	for i := range n {
		if err := g.Transmit(0, vhost.NetHeader{}, txFrame(i)); err != nil {
			t.Fatal(err)
		}
	}
	s := &inflightSession{g: g, cfg: cfg, hdrLen: g.HdrLen(), packed: packed, first1: a.Dev}
	s.first = popTx(t, a.Dev, s.hdrLen, n)
	if len(s.first) != n {
		t.Fatalf("the first back end popped %d chains, want %d", len(s.first), n)
	}
	a.Dev.LockDataPath()
	a.Dev.TxQueue(0).Unpop(unpop)
	a.Dev.UnlockDataPath()
	s.first, s.unpopped = s.first[:n-unpop], s.first[n-unpop:]
	return s
}

// crash disconnects the guest from the first back end, as a back end that
// dies does.
func (s *inflightSession) crash(t *testing.T) {
	t.Helper()
	if err := s.g.Disconnect(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool { return !s.first1.Connected() }) {
		t.Fatal("the first back end still has the guest")
	}
}

// attach serves a new device (the restarted back end) and attaches the
// guest to it.
func (s *inflightSession) attach(t *testing.T) (*vhost.Device, error) {
	t.Helper()
	b := vhosttest.Serve(t, s.cfg)
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: b.Path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	return b.Dev, s.g.Attach(uc)
}

// resumeTen attaches a session of restartSession(t, 10, 1, 6, 1, 4) to a
// restarted back end, sends frames 10 and 11, and checks what the back
// end pops: the six chains not completed, in the order they were first
// taken, then the one given back (9), then the new ones; nothing twice.
func (s *inflightSession) resumeTen(t *testing.T) (*vhost.Device, []popped) {
	t.Helper()
	dev, err := s.attach(t)
	if err != nil {
		t.Fatalf("attaching to the restarted back end: %v", err)
	}
	for i := 10; i < 12; i++ {
		if err := s.g.Transmit(0, vhost.NetHeader{}, txFrame(i)); err != nil {
			t.Fatal(err)
		}
	}
	got := popTx(t, dev, s.hdrLen, 100)
	want := s.unfinished(1, 4, 6)
	if len(got) < len(want) || !slices.Equal(got[:len(want)], want) {
		t.Fatalf("the restarted back end popped %v, want %v first", got, want)
	}
	var ids []int
	for _, p := range got[len(want):] {
		ids = append(ids, p.id)
	}
	if !slices.Equal(ids, []int{9, 10, 11}) {
		t.Fatalf("after the resubmitted chains came frames %v, want [9 10 11]", ids)
	}
	return dev, got
}

// unfinished is s.first without the chains at indexes done.
func (s *inflightSession) unfinished(done ...int) []popped {
	var want []popped
	for i, p := range s.first {
		if !slices.Contains(done, i) {
			want = append(want, p)
		}
	}
	return want
}

// attachHostile attaches the guest to a restarted back end after a test
// rewrote its inflight buffer: with want "" the rings must start (the
// device is returned), otherwise the back end must refuse the transmit
// ring for a reason mentioning want, and not run it (nil is returned).
func (s *inflightSession) attachHostile(t *testing.T, want string) *vhost.Device {
	t.Helper()
	var refusals refusalLog
	s.cfg, refusals = withRefusalLog(s.cfg)
	dev, err := s.attach(t)
	if want == "" {
		if err != nil {
			t.Fatal(err)
		}
		return dev
	}
	refusals.refused(t, err, want)
	dev.LockDataPath()
	q := dev.TxQueue(0)
	dev.UnlockDataPath()
	if q != nil {
		t.Fatal("the transmit ring runs on a corrupt inflight region")
	}
	return nil
}

// txRegion maps the guest's inflight buffer and returns the transmit
// queue's region (queue 1 of 2, 64 descriptors).
func (s *inflightSession) txRegion(t *testing.T) []byte {
	t.Helper()
	m, err := unix.Mmap(s.g.InflightFD, 0, int(s.g.InflightSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	per := vhost.InflightBytes(1, 64)
	if s.packed {
		per = vhost.InflightBytesPacked(1, 64)
	}
	return m[per : 2*per]
}

func TestInflightResumeSplit(t *testing.T) {
	// Ten frames taken, the last one given back (Unpop), three of the
	// other nine completed out of order, then the back end dies.
	s := restartSession(t, 10, 1, 6, 1, 4)
	// What the first back end left in the buffer: a flag on every chain
	// taken and neither completed nor given back.
	r := s.txRegion(t)
	for i, p := range append(s.first, s.unpopped...) {
		want := byte(1)
		if i == 1 || i == 4 || i == 6 || i >= len(s.first) {
			want = 0
		}
		if f := r[16+16*int(p.head)]; f != want {
			t.Errorf("chain %d (head %d) has inflight flag %d, want %d", i, p.head, f, want)
		}
	}
	dev, got := s.resumeTen(t)
	var heads []uint16
	for _, p := range got {
		heads = append(heads, p.head)
	}
	pushTx(dev, heads...)
	if n := s.g.ReclaimTx(0); n != len(got) {
		t.Fatalf("the guest got %d buffers back, want %d", n, len(got))
	}
	if more := popTx(t, dev, s.hdrLen, 10); len(more) != 0 {
		t.Fatalf("chains popped twice: %v", more)
	}
	// A second restart with everything completed resubmits nothing.
	if err := s.g.Disconnect(); err != nil {
		t.Fatal(err)
	}
	waitFor(func() bool { return !dev.Connected() })
	dev, err := s.attach(t)
	if err != nil {
		t.Fatal(err)
	}
	if more := popTx(t, dev, s.hdrLen, 10); len(more) != 0 {
		t.Fatalf("a clean restart resubmitted %v", more)
	}
}

// TestInflightResumeMidBatch: the back end died after publishing a batch
// in the used ring and before clearing its inflight flags (used_idx still
// behind used->idx). The batch must not be resubmitted.
func TestInflightResumeMidBatch(t *testing.T) {
	s := restartSession(t, 6, 0, 0, 3, 5)
	r := s.txRegion(t)
	// Undo the clearing: flags back on, used_idx back by the batch.
	for _, i := range []int{0, 3, 5} {
		r[16+16*int(s.first[i].head)] = 1
	}
	used := binary.LittleEndian.Uint16(r[14:])
	binary.LittleEndian.PutUint16(r[14:], used-3)
	dev, err := s.attach(t)
	if err != nil {
		t.Fatal(err)
	}
	got := popTx(t, dev, s.hdrLen, 100)
	want := []popped{s.first[1], s.first[2], s.first[4]}
	if !slices.Equal(got, want) {
		t.Fatalf("after a crash mid-batch the restarted back end popped %v, want %v", got, want)
	}
	if u := binary.LittleEndian.Uint16(r[14:]); u != used {
		t.Fatalf("used_idx %d after the resume, want used->idx %d", u, used)
	}
}

// TestInflightHostileRegion: a front end that rewrote the buffer between
// sessions gets the ring refused with a clear reason, or (garbage counters
// only) exactly the inflight chains back; never a crash, never a head
// outside the ring.
func TestInflightHostileRegion(t *testing.T) {
	for _, c := range []struct {
		name    string
		corrupt func(r []byte, s *inflightSession)
		want    string // "" : the ring starts
	}{
		{"version", func(r []byte, _ *inflightSession) { r[8] = 7 }, "version 7"},
		{"desc-num", func(r []byte, _ *inflightSession) { binary.LittleEndian.PutUint16(r[10:], 32) }, "desc_num 32"},
		{"flag-value", func(r []byte, _ *inflightSession) { r[16+16*9] = 3 }, "flag 3"},
		{"every-head-inflight", func(r []byte, _ *inflightSession) {
			for h := range 64 {
				r[16+16*h] = 1
			}
		}, "outstanding"},
		{"used-idx-far-behind", func(r []byte, _ *inflightSession) {
			binary.LittleEndian.PutUint16(r[14:], binary.LittleEndian.Uint16(r[14:])-100)
		}, "behind"},
		{"batch-head-out-of-range", func(r []byte, _ *inflightSession) {
			binary.LittleEndian.PutUint16(r[14:], binary.LittleEndian.Uint16(r[14:])-1)
			binary.LittleEndian.PutUint16(r[12:], 1000)
		}, "head 1000"},
		{"batch-list-out-of-range", func(r []byte, s *inflightSession) {
			binary.LittleEndian.PutUint16(r[14:], binary.LittleEndian.Uint16(r[14:])-3)
			binary.LittleEndian.PutUint16(r[16+16*int(s.first[3].head)+6:], 0xffff) // second of the batch list
		}, "head 65535"},
		{"garbage-counters", func(r []byte, _ *inflightSession) {
			for h := range 64 {
				binary.LittleEndian.PutUint64(r[16+16*h+8:], uint64(h)*0x9e3779b97f4a7c15)
			}
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := restartSession(t, 6, 0, 0, 3, 5)
			c.corrupt(s.txRegion(t), s)
			dev := s.attachHostile(t, c.want)
			if dev == nil {
				return
			}
			got := popTx(t, dev, s.hdrLen, 100)
			var heads, want []uint16
			for _, p := range got {
				heads = append(heads, p.head)
			}
			for _, i := range []int{1, 2, 4} {
				want = append(want, s.first[i].head)
			}
			slices.Sort(heads)
			slices.Sort(want)
			if !slices.Equal(heads, want) {
				t.Fatalf("with garbage counters the restarted back end popped heads %v, want %v in some order", heads, want)
			}
		})
	}
}

// BenchmarkSplitPopPushInflight is BenchmarkSplitPopPush with an inflight
// region attached (Pop marks, Push links, Flush clears): compare the two
// for the cost of tracking, and BenchmarkSplitPopPush before and after
// the hooks for the cost of the nil checks without a region.
func BenchmarkSplitPopPushInflight(b *testing.B) {
	const burst = 32
	qp := newQueuePair(b, 256, true, false)
	region, err := unix.Mmap(-1, 0, int(vhost.InflightBytes(1, 256)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(region)
	if err := qp.dev.AttachInflightForTest(region); err != nil {
		b.Fatal(err)
	}
	primeRecycling(b, qp, 256)
	c := newChain(8)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += burst {
		cycle(b, qp, &c, burst)
	}
}
