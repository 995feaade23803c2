package vhost_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// pageSet collects the 4 KiB pages of guest physical ranges.
type pageSet map[uint64]bool

func (s pageSet) add(gpa, n uint64) {
	if n == 0 {
		return
	}
	for p := gpa &^ (vhost.LogPageSize - 1); p < gpa+n; p += vhost.LogPageSize {
		s[p] = true
	}
}

func (s pageSet) sorted() []uint64 {
	var out []uint64
	for p := range s {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// migratingLoopback is a guest served by a device offering migration,
// echoing through a Loopback, with receive writes tracked.
type migratingLoopback struct {
	dev  *vhost.Device
	g    *guest.Guest
	loop *vhosttest.Loopback
}

func newMigratingLoopback(t *testing.T, packed bool, rxBuf int) *migratingLoopback {
	t.Helper()
	features := vhost.DefaultFeatures
	wanted := uint64(guest.DefaultWanted)
	if packed {
		features |= vhost.FRingPacked
		wanted |= vhost.FRingPacked
	}
	s := vhosttest.Serve(t, vhost.Config{Features: features, Migration: true})
	g, err := guest.Dial(s.Path, guest.Options{Features: wanted, RxBufSize: rxBuf, QueueSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if g.Protocol&vhost.ProtoFLogShmfd == 0 {
		t.Fatalf("LOG_SHMFD not negotiated (protocol %#x)", g.Protocol)
	}
	if err := g.PostRx(0, 32); err != nil {
		t.Fatal(err)
	}
	g.TrackRxWrites = true
	return &migratingLoopback{dev: s.Dev, g: g, loop: vhosttest.NewLoopback(s.Dev)}
}

// traffic echoes frames of the given sizes and returns them received.
func (m *migratingLoopback) traffic(t *testing.T, sizes ...int) {
	t.Helper()
	before := len(m.g.RxWrites)
	for i, n := range sizes {
		f := make([]byte, n)
		copy(f, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
		f[n-1] = byte(i)
		if err := m.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
		m.loop.Poll()
	}
	got, err := m.g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(sizes) {
		t.Fatalf("received %d frames, sent %d (%+v)", len(got), len(sizes), m.loop.Counters())
	}
	m.g.ReclaimTx(0)
	if err := m.g.PostRx(0, len(m.g.RxWrites)-before); err != nil {
		t.Fatal(err)
	}
}

// TestDirtyLogMarksWhatTheDeviceWrote migrates a guest's log through a
// logged window and checks that the pages marked are exactly those the
// device wrote: the receive buffers as far as each used entry says (frames
// spanning page boundaries and, with mergeable buffers, several buffers)
// and the used rings (descriptor rings for packed rings); transmit buffers
// are only read and stay clean. With logging off nothing is marked.
func TestDirtyLogMarksWhatTheDeviceWrote(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			// 3000-byte buffers straddle page boundaries; 5000-byte frames
			// span two of them.
			m := newMigratingLoopback(t, packed, 3000)
			g := m.g
			m.traffic(t, 60, 1500) // before migration: nothing to log
			// A receive chain popped before logging starts and written
			// while it is on, as a NIC's buffers are.
			held := vhost.Chain{Segs: make([]vhost.Segment, 0, 8)}
			m.dev.LockDataPath()
			ok, err := m.dev.RxQueue(0).Pop(&held)
			m.dev.UnlockDataPath()
			if !ok || err != nil {
				t.Fatalf("Pop before migration: %v, %v", ok, err)
			}
			log, err := g.StartMigration()
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			m.dev.LockDataPath()
			m.dev.RxQueue(0).Unpop(1)
			m.dev.UnlockDataPath()
			if got := log.Take(); len(got) != 0 {
				t.Fatalf("pages marked before anything was written: %#x", got)
			}
			g.RxWrites = nil
			m.traffic(t, 60, 1000, 2990, 5000, 1514, 7000, 64)

			want, rings := pageSet{}, pageSet{}
			for _, w := range g.RxWrites {
				want.add(w.GPA, w.Len)
			}
			for _, i := range []int{0, 1} {
				r := g.Ring(i)
				if packed {
					rings.add(r.DescGPA, 16*uint64(r.Size()))
					rings.add(r.UsedGPA, 4)
				} else {
					rings.add(r.UsedGPA, 6+8*uint64(r.Size()))
				}
				// Both rings took used entries in the window.
				if packed {
					want.add(r.DescGPA, 16)
				} else {
					want.add(r.UsedGPA, 4)
				}
			}
			got := pageSet{}
			for _, p := range log.Take() {
				got[p] = true
			}
			for _, p := range want.sorted() {
				if !got[p] {
					t.Errorf("page %#x written but not marked", p)
				}
			}
			for _, p := range got.sorted() {
				if !want[p] && !rings[p] {
					t.Errorf("page %#x marked but never written", p)
				}
			}
			if t.Failed() {
				t.Fatalf("marked %#x, want %#x (+ ring pages %#x)", got.sorted(), want.sorted(), rings.sorted())
			}
			// The device's own record of what it could have written while
			// logging (which a migration test compares with what reached
			// the destination) holds every page written, the rings, and
			// the chain popped before logging started.
			m.dev.LockDataPath()
			touchedList := m.dev.DirtyLog().Touched()
			m.dev.UnlockDataPath()
			touched := parsePageRanges(t, touchedList)
			for _, s := range held.Segs {
				want.add(s.GPA, uint64(len(s.Buf)))
			}
			for _, p := range append(want.sorted(), rings.sorted()...) {
				if !touched[p] {
					t.Errorf("page %#x written while logging, not in the device's touched pages %s", p, touchedList)
				}
			}
			if mem := g.Mem.End() / vhost.LogPageSize; uint64(len(touched)) >= mem/2 {
				t.Errorf("touched pages %s cover half or more of the %d pages of guest memory", touchedList, mem)
			}

			// Logging off (the log stays mapped, as after QEMU cancels a
			// migration): nothing is marked.
			if err := g.SetLogging(false); err != nil {
				t.Fatal(err)
			}
			m.traffic(t, 60, 5000)
			if got := log.Take(); len(got) != 0 {
				t.Fatalf("logging off, yet pages %#x were marked", got)
			}
		})
	}
}

// parsePageRanges reads DirtyLog.Touched's list of page-number ranges
// into the set of those pages' guest physical addresses.
func parsePageRanges(t *testing.T, list string) pageSet {
	t.Helper()
	s := pageSet{}
	if list == "" {
		return s
	}
	for _, r := range strings.Split(list, ",") {
		lo, hi, found := strings.Cut(r, "-")
		a, err := strconv.ParseUint(lo, 0, 64)
		if err != nil {
			t.Fatalf("touched pages %q: %v", list, err)
		}
		b := a
		if found {
			if b, err = strconv.ParseUint(hi, 0, 64); err != nil || b < a {
				t.Fatalf("touched pages %q: bad range %q", list, r)
			}
		}
		for p := a; p <= b; p++ {
			s[p*vhost.LogPageSize] = true
		}
	}
	return s
}

// TestDirtyLogRefusals sends hostile SET_LOG_BASE and related requests;
// each is refused for its own reason (a SET_LOG_BASE refusal drops the
// connection: the front end waits for a reply it could only take for a
// success), and nothing is mapped or leaked.
func TestDirtyLogRefusals(t *testing.T) {
	memfd := func(t *testing.T, size int64, seal bool) int {
		flags := unix.MFD_CLOEXEC
		if seal {
			flags |= unix.MFD_ALLOW_SEALING
		}
		fd, err := unix.MemfdCreate("log", flags)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, size); err != nil {
			t.Fatal(err)
		}
		if seal {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	cases := []struct {
		name      string
		size, off func(need uint64) uint64
		fd        func(t *testing.T, need uint64) int
		want      string
	}{
		{"too small", func(n uint64) uint64 { return n - 8 }, func(uint64) uint64 { return 0 },
			func(t *testing.T, n uint64) int { return memfd(t, int64(n), true) }, "the memory table needs"},
		{"offset overflow", func(n uint64) uint64 { return n }, func(uint64) uint64 { return ^uint64(0) - 7 },
			func(t *testing.T, n uint64) int { return memfd(t, int64(n), true) }, vhost.ErrLogBounds.Error()},
		{"zero size", func(uint64) uint64 { return 0 }, func(uint64) uint64 { return 0 },
			func(t *testing.T, n uint64) int { return memfd(t, int64(n), true) }, "size 0x0 offset 0x0"},
		{"truncated file", func(n uint64) uint64 { return n }, func(uint64) uint64 { return 4096 },
			func(t *testing.T, n uint64) int { return memfd(t, int64(n), true) }, "shorter than offset+size"},
		{"eventfd", func(n uint64) uint64 { return n }, func(uint64) uint64 { return 0 },
			func(t *testing.T, n uint64) int { return eventFD(t) }, vhost.ErrNotSharedMemory.Error()},
		{"unsealed memfd", func(n uint64) uint64 { return n }, func(uint64) uint64 { return 0 },
			func(t *testing.T, n uint64) int { return memfd(t, int64(n), false) }, vhost.ErrUnsealed.Error()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, refusals := withRefusalLog(vhost.Config{Migration: true})
			s := vhosttest.Serve(t, cfg)
			g, err := guest.Dial(s.Path, guest.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			need := guest.LogSizeFor(g.Mem.End() - 1)
			err = g.SendLogBase(c.fd(t, need), c.size(need), c.off(need))
			refusals.refused(t, err, c.want)
			waitDisconnected(t, s.Dev)
		})
	}

	t.Run("requests that do not drop the connection", func(t *testing.T) {
		cfg, refusals := withRefusalLog(vhost.Config{Migration: true})
		s := vhosttest.Serve(t, cfg)
		g, err := guest.Dial(s.Path, guest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		fe := g.FE
		// SET_LOG_FD wants an eventfd.
		_, err = fe.Request(vhost.ReqSetLogFD, nil, memfd(t, 4096, true))
		refusals.refused(t, err, "SET_LOG_FD")
		if _, err := fe.Request(vhost.ReqSetLogFD, nil, eventFD(t)); err != nil {
			t.Fatalf("SET_LOG_FD with an eventfd: %v", err)
		}
		// A used ring log address outside guest memory.
		desc, avail, used := g.Ring(0).Addrs()
		bad := vhost.VringAddr{Index: 0, Flags: vhost.VringFLog, Desc: desc, Avail: avail, Used: used, Log: g.Mem.End()}
		_, err = fe.Request(vhost.ReqSetVringAddr, vhost.EncodeVringAddr(bad))
		refusals.refused(t, err, "used ring log address")
		bad.Log, bad.Flags = g.Ring(0).UsedGPA+2, vhost.VringFLog
		_, err = fe.Request(vhost.ReqSetVringAddr, vhost.EncodeVringAddr(bad))
		refusals.refused(t, err, "not 4-byte aligned")
		bad.Log, bad.Flags = g.Ring(0).UsedGPA, 0x2
		_, err = fe.Request(vhost.ReqSetVringAddr, vhost.EncodeVringAddr(bad))
		refusals.refused(t, err, "unknown flags")

		// Logging on with a log sized for the memory: a memory region
		// beyond the log's last page is refused.
		log, err := g.StartMigration()
		if err != nil {
			t.Fatal(err)
		}
		defer log.Close()
		mem, err := guest.NewMemory(guest.MemoryOptions{Size: 2 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		r := mem.Regions()[0]
		r.GuestPhysAddr = 0x10_0000_0000
		_, err = fe.Request(vhost.ReqAddMemReg, vhost.EncodeMemReg(r), mem.FD())
		refusals.refused(t, err, vhost.ErrLogTooSmall.Error())
		// The session still works, logged.
		if _, err := fe.U64(vhost.ReqGetFeatures); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTouchedRecordsPostedAndPoppedBuffers: the device's record of the
// pages it could write while logging holds the buffers of chains posted
// when logging started (a NIC's receive buffers, popped before and written
// after) and of every chain popped since, and nothing else.
func TestTouchedRecordsPostedAndPoppedBuffers(t *testing.T) {
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			qp := newRingPair(t, 16, false, false, packed)
			want := pageSet{}
			add := func(gpa, n uint64) {
				t.Helper()
				if _, err := qp.drv.Add([]guest.Buf{{GPA: gpa, Len: uint32(n), Write: true}}, false); err != nil {
					t.Fatal(err)
				}
				qp.drv.Publish()
				want.add(gpa, n)
			}
			pages := int(qp.mem.End() / vhost.LogPageSize)
			// Posted before logging: recorded when it starts.
			add(qp.buf+100, 5000)
			l := qp.dev.StartLogForTest(pages, true)
			check := func() {
				t.Helper()
				got := parsePageRanges(t, l.Touched())
				for _, p := range want.sorted() {
					if !got[p] {
						t.Errorf("page %#x not recorded (touched %s)", p, l.Touched())
					}
				}
				for _, p := range got.sorted() {
					if !want[p] {
						t.Errorf("page %#x recorded, never posted (touched %s)", p, l.Touched())
					}
				}
			}
			check()
			// Popped while logging, posted after it started: recorded by Pop.
			qp2 := newRingPair(t, 16, false, false, packed)
			l2 := qp2.dev.StartLogForTest(pages, false)
			if _, err := qp2.drv.Add([]guest.Buf{{GPA: qp2.buf + 3*4096, Len: 4096 + 1, Write: true}}, false); err != nil {
				t.Fatal(err)
			}
			qp2.drv.Publish()
			if got := l2.Touched(); got != "" {
				t.Fatalf("recorded %s before anything was popped", got)
			}
			c := newChain(4)
			if ok, err := qp2.dev.Pop(&c); !ok || err != nil {
				t.Fatalf("Pop: %v %v", ok, err)
			}
			p := qp2.buf / vhost.LogPageSize
			if got, w := l2.Touched(), fmt.Sprintf("%#x-%#x", p+3, p+4); got != w {
				t.Errorf("after Pop: touched %s, want %s", got, w)
			}
			// A huge buffer is recorded only as far as a device writes
			// into one chain (128 KiB): a front end cannot make each pop
			// set bits for all of memory.
			big, err := qp2.mem.Alloc(1<<20, 4096)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := qp2.drv.Add([]guest.Buf{{GPA: big, Len: 1 << 20, Write: true}}, false); err != nil {
				t.Fatal(err)
			}
			qp2.drv.Publish()
			if ok, err := qp2.dev.Pop(&c); !ok || err != nil {
				t.Fatalf("Pop: %v %v", ok, err)
			}
			bp := big / vhost.LogPageSize
			if got, w := l2.Touched(), fmt.Sprintf("%#x-%#x,%#x-%#x", p+3, p+4, bp, bp+31); got != w {
				t.Errorf("after a 1 MiB buffer: touched %s, want %s", got, w)
			}
		})
	}
}
