package vhost_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// recordingHook remembers which regions are DMA-mapped.
type recordingHook struct {
	mu     sync.Mutex
	mapped map[*byte]int // host address -> size
	maps   int
	unmaps int
}

func (h *recordingHook) MapRegion(r vhost.Region) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(r.Host) != int(r.Size) {
		return errors.New("host slice does not match size")
	}
	h.mapped[&r.Host[0]] = int(r.Size)
	h.maps++
	return nil
}

func (h *recordingHook) UnmapRegion(r vhost.Region) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.mapped[&r.Host[0]]; !ok {
		return errors.New("unmap of a region never mapped")
	}
	// The memory must still be mapped while the hook runs. (Asked of the
	// kernel, not by reading it: a front end may have truncated the file
	// behind it, and then a read faults although the mapping is there.)
	if err := unix.Madvise(r.Host, unix.MADV_NORMAL); err != nil {
		return fmt.Errorf("region unmapped before the hook ran: %w", err)
	}
	delete(h.mapped, &r.Host[0])
	h.unmaps++
	return nil
}

func (h *recordingHook) count() int {
	n, _, _ := h.counts()
	return n
}

func (h *recordingHook) counts() (mapped, maps, unmaps int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.mapped), h.maps, h.unmaps
}

func rawFrontend(t *testing.T, path string) *guest.Frontend {
	t.Helper()
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	fe, err := guest.NewFrontend(uc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fe.Close() })
	return fe
}

// ackedFrontend negotiates REPLY_ACK so every request reports its status.
func ackedFrontend(t *testing.T, path string) *guest.Frontend {
	fe := rawFrontend(t, path)
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFReplyAck|vhost.ProtoFConfigureMemSlots|vhost.ProtoFStatus)); err != nil {
		t.Fatal(err)
	}
	fe.EnableReplyAck(true)
	return fe
}

func eventFD(t *testing.T) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestFeatureNegotiation(t *testing.T) {
	cfg, log := withRefusalLog(vhost.Config{Features: vhost.FVersion1 | vhost.NetFMrgRxbuf, QueuePairs: 1})
	s := vhosttest.Serve(t, cfg)
	fe := rawFrontend(t, s.Path)
	f, err := fe.U64(vhost.ReqGetFeatures)
	if err != nil {
		t.Fatal(err)
	}
	if f != vhost.FVersion1|vhost.NetFMrgRxbuf|vhost.FProtocolFeatures {
		t.Fatalf("offered %#x", f)
	}
	p, err := fe.U64(vhost.ReqGetProtocolFeatures)
	if err != nil || p != vhost.DefaultProtocolFeatures {
		t.Fatalf("protocol features %#x %v", p, err)
	}
	fe.EnableReplyAck(true)
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFReplyAck)); err != nil {
		t.Fatal(err)
	}
	_, err = fe.Request(vhost.ReqSetFeatures, vhost.EncodeU64(vhost.FVersion1|vhost.FEventIdx))
	log.refused(t, err, "acked features 0x20000000 that were not offered")
	if _, err := fe.Request(vhost.ReqSetFeatures, vhost.EncodeU64(vhost.FVersion1)); err != nil {
		t.Fatal(err)
	}
	if n, err := fe.U64(vhost.ReqGetQueueNum); err != nil || n != 1 {
		t.Fatalf("GET_QUEUE_NUM %d %v", n, err)
	}
}

func TestNewDeviceRejectsBadConfig(t *testing.T) {
	for _, c := range []struct {
		cfg  vhost.Config
		want string // what the error must name
	}{
		{vhost.Config{Features: vhost.NetFCtrlVLAN}, "features 0x80000 are not implemented"},
		{vhost.Config{ProtocolFeatures: vhost.ProtoFBackendReq}, "protocol features 0x20 are not implemented"},
		{vhost.Config{QueuePairs: 4, Features: vhost.FVersion1}, "4 queue pairs need the MQ feature"},
		{vhost.Config{MAC: net.HardwareAddr{1, 2, 3}}, "MAC 01:02:03 is not 6 bytes"},
	} {
		if _, err := vhost.NewDevice(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %+v: err = %v, want it to say %q", c.cfg, err, c.want)
		}
	}
}

func TestMalformedRequestsAreRefused(t *testing.T) {
	cfg, log := withRefusalLog(vhost.Config{QueuePairs: 2})
	s := vhosttest.Serve(t, cfg)
	fe := ackedFrontend(t, s.Path)
	efd := eventFD(t)
	// Each request is wrong in one way, and must be refused for that
	// reason (want), not for another check that happens to run first.
	cases := []struct {
		name    string
		req     vhost.Request
		payload []byte
		fds     []int
		want    string
	}{
		{"unknown request", vhost.Request(99), nil, nil, "REQUEST_99 is not implemented"},
		{"short SET_FEATURES", vhost.ReqSetFeatures, []byte{1, 2, 3, 4}, nil, vhost.ErrBadSize.Error()},
		{"vring index out of range", vhost.ReqSetVringNum, vhost.EncodeVringState(vhost.VringState{Index: 99, Num: 256}), nil, "vring index 99 out of range"},
		{"ring size not a power of two", vhost.ReqSetVringNum, vhost.EncodeVringState(vhost.VringState{Index: 0, Num: 300}), nil, "size 300: want a power of two"},
		{"kick without fd", vhost.ReqSetVringKick, vhost.EncodeVringFile(0, false), nil, vhost.ErrBadFDCount.Error()},
		{"kick with no-fd flag and an fd", vhost.ReqSetVringCall, vhost.EncodeVringFile(0, true), []int{efd}, vhost.ErrBadFDCount.Error()},
		{"kick index out of range", vhost.ReqSetVringCall, vhost.EncodeVringFile(200, false), []int{efd}, "vring index 200 out of range"},
		{"fd on a request without fds", vhost.ReqSetOwner, nil, []int{efd}, vhost.ErrBadFDCount.Error()},
		{"mem table without fds", vhost.ReqSetMemTable, vhost.EncodeMemTable([]vhost.RegionDesc{{Size: 4096}}), nil, "1 regions but 0 fds"},
		{"mem table with 9 regions", vhost.ReqSetMemTable, func() []byte { b := vhost.EncodeMemTable(nil); b[0] = 9; return b }(), nil, "9 regions (1-8 allowed)"},
		{"dirty log base", vhost.ReqSetLogBase, make([]byte, 16), []int{efd}, "SET_LOG_BASE without the LOG_SHMFD protocol feature"},
		{"enable value 2", vhost.ReqSetVringEnable, vhost.EncodeVringState(vhost.VringState{Index: 0, Num: 2}), nil, "SET_VRING_ENABLE 2 for vring 0: want 0 or 1"},
		{"status too large", vhost.ReqSetStatus, vhost.EncodeU64(0x100), nil, "0x100 does not fit the status byte"},
		{"backend req fd", vhost.ReqSetBackendReqFD, vhost.EncodeU64(0), []int{efd}, "SET_BACKEND_REQ_FD is not implemented"},
		{"protocol feature not offered", vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFLogShmfd), nil, "protocol features 0x2 that were not offered"},
	}
	before := openFDs(t)
	for _, c := range cases {
		n := openFDs(t)
		_, err := fe.Request(c.req, c.payload, c.fds...)
		t.Run(c.name, func(t *testing.T) { log.refused(t, err, c.want) })
		if openFDs(t) != n {
			t.Errorf("%s: leaked a descriptor", c.name)
		}
	}
	// The connection survived all of that.
	if _, err := fe.U64(vhost.ReqGetFeatures); err != nil {
		t.Fatalf("connection unusable after refused requests: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("back end kept %d descriptors from refused requests", after-before)
	}
}

func TestBadHeaderDropsConnectionOnly(t *testing.T) {
	s := vhosttest.Serve(t, vhost.Config{})
	fe := rawFrontend(t, s.Path)
	if err := fe.Conn().WriteMessage(vhost.Header{Request: vhost.ReqGetFeatures, Flags: 2}, nil, nil); err != nil {
		t.Fatal(err)
	}
	// The back end hangs up: the front end reads the end of the stream,
	// not a reply (nor an error of its own reading).
	if _, err := fe.Conn().ReadMessage(); !errors.Is(err, io.EOF) {
		t.Fatalf("after a message with protocol version 2 the front end read %v, want the connection closed (EOF)", err)
	}
	fe2 := rawFrontend(t, s.Path)
	if _, err := fe2.U64(vhost.ReqGetFeatures); err != nil {
		t.Fatalf("back end does not accept a new front end: %v", err)
	}
}

// openFDs counts this process's descriptors of the kinds a front end
// passes: eventfds and memory files (isMemoryFile). (Sockets and runtime
// descriptors come and go on their own schedule and would make the count
// racy.)
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && isMemoryFile(link) {
			n++
		}
	}
	return n
}

// fdsAfterSession counts the memory and event descriptors open once a
// session has ended, waiting up to 2 s for the count to come back to
// before: a call eventfd's notifier goroutine closes it after the session
// released it (it may be in a write the front end holds), so for a moment
// after the disconnect one can still be open without having leaked.
func fdsAfterSession(t *testing.T, before int) int {
	t.Helper()
	n := openFDs(t)
	for deadline := time.Now().Add(2 * time.Second); n != before && time.Now().Before(deadline); n = openFDs(t) {
		time.Sleep(5 * time.Millisecond)
	}
	return n
}

func waitDisconnected(t *testing.T, d *vhost.Device) {
	t.Helper()
	for range 500 {
		if !d.Connected() {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("back end did not notice the disconnect")
}

func TestSessionLifecycleReleasesEverything(t *testing.T) {
	hook := &recordingHook{mapped: map[*byte]int{}}
	s := vhosttest.Serve(t, vhost.Config{Hook: hook, QueuePairs: 2})
	before := openFDs(t)
	g, err := guest.Dial(s.Path, guest.Options{QueuePairs: 2, Memory: guest.MemoryOptions{Split: true}})
	if err != nil {
		t.Fatal(err)
	}
	if hook.count() != 2 {
		t.Fatalf("hook saw %d regions mapped, want 2", hook.count())
	}
	// A second memory table replaces the first: old regions unmapped.
	if _, err := g.FE.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(g.Mem.Regions()), g.Mem.FD(), g.Mem.FD()); err != nil {
		t.Fatal(err)
	}
	if mapped, maps, unmaps := hook.counts(); maps != 4 || unmaps != 2 || mapped != 2 {
		t.Fatalf("after a new table: maps %d unmaps %d mapped %d", maps, unmaps, mapped)
	}
	if st := s.Dev.Status(); st&vhost.StatusDriverOK == 0 {
		t.Fatalf("status %#x after setup", st)
	}
	// Stopping a ring returns where it stopped.
	base, err := g.StopRing(1)
	if err != nil || base != 0 {
		t.Fatalf("GET_VRING_BASE = %d, %v", base, err)
	}
	g.Close()
	waitDisconnected(t, s.Dev)
	if hook.count() != 0 {
		t.Fatalf("%d regions still DMA-mapped after disconnect", hook.count())
	}
	if after := fdsAfterSession(t, before); after != before {
		t.Fatalf("%d descriptors leaked across a session", after-before)
	}
}

func TestResetOwnerStopsRingsAndMemory(t *testing.T) {
	hook := &recordingHook{mapped: map[*byte]int{}}
	s := vhosttest.Serve(t, vhost.Config{Hook: hook})
	g, err := guest.Dial(s.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.FE.Request(vhost.ReqResetOwner, nil); err != nil {
		t.Fatal(err)
	}
	if hook.count() != 0 {
		t.Fatal("RESET_OWNER left memory mapped")
	}
	s.Dev.LockDataPath()
	q := s.Dev.TxQueue(0)
	s.Dev.UnlockDataPath()
	if q != nil {
		t.Fatal("RESET_OWNER left a ring running")
	}
}

func TestMemSlots(t *testing.T) {
	hook := &recordingHook{mapped: map[*byte]int{}}
	cfg, log := withRefusalLog(vhost.Config{Hook: hook})
	s := vhosttest.Serve(t, cfg)
	fe := ackedFrontend(t, s.Path)
	n, err := fe.U64(vhost.ReqGetMaxMemSlots)
	if err != nil || n < 8 {
		t.Fatalf("GET_MAX_MEM_SLOTS = %d, %v", n, err)
	}
	mem, err := guest.NewMemory(guest.MemoryOptions{Size: 4 << 20, Split: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	regs := mem.Regions()
	for _, r := range regs {
		if _, err := fe.Request(vhost.ReqAddMemReg, vhost.EncodeMemReg(r), mem.FD()); err != nil {
			t.Fatal(err)
		}
	}
	_, err = fe.Request(vhost.ReqAddMemReg, vhost.EncodeMemReg(regs[0]), mem.FD())
	log.refused(t, err, vhost.ErrRegionLayout.Error())
	if hook.count() != 2 {
		t.Fatalf("hook has %d regions", hook.count())
	}
	if _, err := fe.Request(vhost.ReqRemMemReg, vhost.EncodeMemReg(regs[0])); err != nil {
		t.Fatal(err)
	}
	_, err = fe.Request(vhost.ReqRemMemReg, vhost.EncodeMemReg(regs[0]))
	log.refused(t, err, "REM_MEM_REG: no region at gpa")
	if hook.count() != 1 {
		t.Fatalf("hook has %d regions after REM_MEM_REG", hook.count())
	}
}

func TestGetConfig(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	s := vhosttest.Serve(t, vhost.Config{ProtocolFeatures: vhost.DefaultProtocolFeatures | vhost.ProtoFConfig, MAC: mac, QueuePairs: 3, Features: vhost.DefaultFeatures, MTU: 9000})
	fe := rawFrontend(t, s.Path)
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(vhost.ProtoFConfig)); err != nil {
		t.Fatal(err)
	}
	p, err := fe.Request(vhost.ReqGetConfig, vhost.EncodeConfig(0, 0, make([]byte, 12)))
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 24 || net.HardwareAddr(p[12:18]).String() != mac.String() ||
		binary.LittleEndian.Uint16(p[20:]) != 3 || binary.LittleEndian.Uint16(p[22:]) != 9000 {
		t.Fatalf("config reply % x", p)
	}
	p, err = fe.Request(vhost.ReqGetConfig, vhost.EncodeConfig(8, 0, make([]byte, 8)))
	if err != nil || len(p) != 0 {
		t.Fatalf("out-of-range GET_CONFIG: % x %v (want an empty config = failure)", p, err)
	}
}

func TestSeveralDevicesAtOnce(t *testing.T) {
	var devs []*vhosttest.Server
	var gs []*guest.Guest
	for range 3 {
		s := vhosttest.Serve(t, vhost.Config{})
		g, err := guest.Dial(s.Path, guest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		devs, gs = append(devs, s), append(gs, g)
	}
	for i, s := range devs {
		loop := vhosttest.NewLoopback(s.Dev)
		if err := gs[i].PostRx(0, 8); err != nil {
			t.Fatal(err)
		}
		f := make([]byte, 60+i)
		f[0] = byte(i)
		if err := gs[i].Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
		loop.Poll()
		pk, err := gs[i].Receive(0)
		if err != nil || len(pk) != 1 || len(pk[0].Frame) != 60+i || pk[0].Frame[6] != byte(i) {
			t.Fatalf("device %d: %+v %v", i, pk, err)
		}
	}
}

func FuzzMessage(f *testing.F) {
	seed := func(r vhost.Request, flags uint32, p []byte) []byte {
		b := make([]byte, vhost.HeaderSize+len(p))
		vhost.EncodeHeader(b, vhost.Header{Request: r, Flags: flags, Size: uint32(len(p))})
		copy(b[vhost.HeaderSize:], p)
		return b
	}
	f.Add(byte(0), seed(vhost.ReqGetFeatures, 1, nil))
	f.Add(byte(1), seed(vhost.ReqSetVringKick, 9, vhost.EncodeVringFile(0, false)))
	f.Add(byte(0), seed(vhost.ReqSetVringAddr, 1, vhost.EncodeVringAddr(vhost.VringAddr{Index: 1, Desc: 1 << 40})))
	f.Add(byte(2), seed(vhost.ReqSetMemTable, 1, vhost.EncodeMemTable([]vhost.RegionDesc{{Size: 4096}, {Size: 1 << 62}})))
	f.Add(byte(0), seed(vhost.ReqGetConfig, 1, vhost.EncodeConfig(4, 0, make([]byte, 300))))
	f.Add(byte(0), seed(vhost.ReqSetVringNum, 1, vhost.EncodeVringState(vhost.VringState{Index: 2, Num: 1 << 15})))
	f.Add(byte(0), seed(vhost.ReqAddMemReg, 1, vhost.EncodeMemReg(vhost.RegionDesc{Size: 1})))
	dev, err := vhost.NewDevice(vhost.Config{QueuePairs: 2, ProtocolFeatures: vhost.DefaultProtocolFeatures | vhost.ProtoFConfig})
	if err != nil {
		f.Fatal(err)
	}
	// Protocol features that unlock the optional requests.
	all := vhost.Message{Header: vhost.Header{Request: vhost.ReqSetProtocolFeatures, Flags: 1, Size: 8},
		Payload: vhost.EncodeU64(vhost.DefaultProtocolFeatures | vhost.ProtoFConfig)}
	f.Fuzz(func(t *testing.T, nfds byte, data []byte) {
		dev.Dispatch(&all)
		h, err := vhost.DecodeHeader(data)
		if err != nil {
			return
		}
		m := vhost.Message{Header: h, Payload: data[vhost.HeaderSize:]}
		if int(h.Size) < len(m.Payload) {
			m.Payload = m.Payload[:h.Size]
		}
		m.Size = uint32(len(m.Payload))
		for range nfds % 3 {
			// Sealed memfds, as QEMU sends, so SET_MEM_TABLE can really
			// map something.
			fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
			if err != nil {
				t.Fatal(err)
			}
			_ = unix.Ftruncate(fd, 1<<16)
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK)
			m.FDs = append(m.FDs, fd)
		}
		dev.Dispatch(&m)
	})
}
