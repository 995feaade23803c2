package engine

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// memlockGuest is one vhost device whose memory hook is a GuestDMA, served
// on a real socket.
type memlockGuest struct {
	dma  *GuestDMA
	dev  *vhost.Device
	path string
}

func serveGuestDMA(t *testing.T, pf *sim.PF, alloc *hugepage.IOVAAllocator, memlock func() (memlockState, error)) *memlockGuest {
	t.Helper()
	m := &memlockGuest{dma: NewGuestDMA(pf.DMA(), alloc)}
	// The simulator's IOMMU pins nothing; play VFIO's accounting.
	m.dma.memlock = memlock
	var err error
	if m.dev, err = vhost.NewDevice(vhost.Config{Name: "g", Hook: m.dma}); err != nil {
		t.Fatal(err)
	}
	m.path = filepath.Join(t.TempDir(), "vhost.sock")
	l, err := vhost.Listen(m.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = vhost.ServeListener(ctx, l, m.dev) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return m
}

// dial connects a guest of mem bytes (the caller closes it), or returns
// why it could not set up.
func (m *memlockGuest) dial(t *testing.T, mem uint64) (*guest.Guest, error) {
	t.Helper()
	g, err := guest.New(guest.Options{Memory: guest.MemoryOptions{Size: mem}})
	if err != nil {
		t.Fatal(err)
	}
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: m.path, Net: "unix"})
	if err != nil {
		g.Close()
		t.Fatal(err)
	}
	if err := g.Attach(uc); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

func (g *GuestDMA) mappedBytes() uint64 {
	var n uint64
	for _, r := range *g.regions.Load() {
		n += r.size
	}
	return n
}

// TestGuestMemoryOverRLIMITMemlockIsRefused: with VFIO pinning every guest
// region, guests together may not lock more than RLIMIT_MEMLOCK. Each
// device is under its own limit; the second guest is refused because of
// the first, cleanly (nothing mapped, no IOVA kept), the first keeps its
// memory, and once it leaves the second fits.
func TestGuestMemoryOverRLIMITMemlockIsRefused(t *testing.T) {
	pf := sim.NewPF(sim.DefaultOptions())
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		t.Fatal(err)
	}
	const mem = 16 << 20
	const nicRings = 2 << 20 // locked before any guest came
	var guests []*memlockGuest
	memlock := func() (memlockState, error) {
		st := memlockState{locked: nicRings, limit: nicRings + mem + mem/2, enforced: true}
		for _, g := range guests {
			st.locked += g.dma.mappedBytes()
		}
		return st, nil
	}
	a := serveGuestDMA(t, pf, alloc, memlock)
	b := serveGuestDMA(t, pf, alloc, memlock)
	guests = []*memlockGuest{a, b}

	ga, err := a.dial(t, mem)
	if err != nil {
		t.Fatalf("first guest, within RLIMIT_MEMLOCK: %v", err)
	}
	defer ga.Close()
	if a.dma.mappedBytes() != mem {
		t.Fatalf("first guest has %d bytes DMA-mapped, want %d", a.dma.mappedBytes(), mem)
	}
	if _, err := b.dial(t, mem); err == nil || !strings.Contains(err.Error(), "SET_MEM_TABLE") {
		t.Fatalf("second guest over RLIMIT_MEMLOCK: err = %v, want SET_MEM_TABLE refused", err)
	}
	if n := b.dma.Mapped(); n != 0 {
		t.Fatalf("refused guest left %d regions DMA-mapped", n)
	}
	if n := a.dma.Mapped(); n != 1 {
		t.Fatalf("the first guest lost its memory: %d regions mapped", n)
	}
	// What the front end cannot see, the log says: check the error itself.
	err = b.dma.MapRegion(vhost.Region{GuestPhysAddr: 0x1000, Size: mem, Host: hostPages(t, mem)})
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_MEMLOCK") {
		t.Fatalf("MapRegion over the limit: %v, want an error naming RLIMIT_MEMLOCK", err)
	}
	ga.Close()
	waitMapped(t, a.dma, 0)
	gb, err := b.dial(t, mem)
	if err != nil {
		t.Fatalf("second guest once the first left: %v (IOVA or accounting leaked by the refusal?)", err)
	}
	gb.Close()
	waitMapped(t, b.dma, 0)

	// Not enforced (CAP_IPC_LOCK, or an unlimited RLIMIT_MEMLOCK): both fit.
	guests = nil
	free := func() (memlockState, error) { return memlockState{locked: 1 << 40, limit: 0}, nil }
	c, d := serveGuestDMA(t, pf, alloc, free), serveGuestDMA(t, pf, alloc, free)
	for _, m := range []*memlockGuest{c, d} {
		g, err := m.dial(t, mem)
		if err != nil {
			t.Fatalf("RLIMIT_MEMLOCK not enforced, yet a guest was refused: %v", err)
		}
		defer g.Close()
	}
}

// hostPages is page-aligned memory for a region the IOMMU could map.
func hostPages(t *testing.T, n int) []byte {
	t.Helper()
	r, err := hugepage.Alloc(uint64(n), hugepage.Options{PageSize: hugepage.Page4K, Name: "memlock-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r.Bytes()
}

func waitMapped(t *testing.T, g *GuestDMA, want int) {
	t.Helper()
	for range 500 {
		if g.Mapped() == want {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%d regions DMA-mapped, want %d", g.Mapped(), want)
}

// TestReadMemlock reads this process's real limits: they must parse, and
// CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK must lift the limit, as they
// do for VFIO.
func TestReadMemlock(t *testing.T) {
	st, err := readMemlock()
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var caps uint64
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			if caps, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := caps&(1<<capIPCLock) == 0 && st.limit != unix.RLIM_INFINITY
	if st.enforced != want {
		t.Errorf("limit enforced = %v with CapEff %#x and RLIMIT_MEMLOCK %d, want %v", st.enforced, caps, st.limit, want)
	}
}
