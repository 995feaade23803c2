package hugepage_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/hugepage"
)

func TestAllocMemfdHugetlb(t *testing.T) {
	const size = 3 << 20 // rounds up to two 2 MiB pages
	r := alloc(t, size, hugepage.Options{PageSize: hugepage.Page2M, Name: "zcnet-test-memfd"})
	if r.Len() != 4<<20 {
		t.Errorf("Len = %d, want %d (rounded up to whole pages)", r.Len(), 4<<20)
	}
	if r.PageSize() != hugepage.Page2M {
		t.Errorf("PageSize = %s, want 2MiB", r.PageSize())
	}
	if r.Addr()%uintptr(hugepage.Page2M) != 0 {
		t.Errorf("Addr %#x is not 2 MiB aligned", r.Addr())
	}
	if got := kernelPageSize(t, r.Addr()); got != hugepage.Page2M {
		t.Errorf("kernel backs the region with %s pages, want 2MiB", got)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(r.FD(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.HUGETLBFS_MAGIC {
		t.Errorf("backing file is on fs type %#x, want hugetlbfs", st.Type)
	}
	fill(r.Bytes(), 0x5a)
	if err := check(r.Bytes(), 0x5a); err != nil {
		t.Error(err)
	}
}

func TestAllocDefaultsTo2M(t *testing.T) {
	r := alloc(t, 1, hugepage.Options{})
	if r.PageSize() != hugepage.Page2M || r.Len() != 2<<20 {
		t.Errorf("zero Options gave %s pages, %d bytes; want 2MiB pages, %d bytes", r.PageSize(), r.Len(), 2<<20)
	}
}

func TestAllocHugetlbfs(t *testing.T) {
	dir := hugetlbfsMount(t)
	const name = "zcnet-test-hugetlbfs"
	r := alloc(t, 2<<20, hugepage.Options{Dir: dir, Name: name})
	if r.PageSize() != hugepage.Page2M {
		t.Errorf("PageSize = %s, want the mount's 2MiB", r.PageSize())
	}
	if got := kernelPageSize(t, r.Addr()); got != hugepage.Page2M {
		t.Errorf("kernel backs the region with %s pages, want 2MiB", got)
	}
	fill(r.Bytes(), 0xc3)
	if err := check(r.Bytes(), 0xc3); err != nil {
		t.Error(err)
	}
	// The file must already be gone from the mount: only the fd holds it.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name) {
			t.Errorf("backing file %s was left in %s", e.Name(), dir)
		}
	}

	// Asking the mount for another page size is refused.
	if _, err := hugepage.Alloc(2<<20, hugepage.Options{Dir: dir, PageSize: hugepage.Page1G}); !errors.Is(err, hugepage.ErrPageSizeUnsupported) {
		t.Errorf("1GiB pages from a 2MiB mount: err = %v, want ErrPageSizeUnsupported", err)
	}
	// A directory that is not hugetlbfs is refused.
	if _, err := hugepage.Alloc(2<<20, hugepage.Options{Dir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "not a hugetlbfs mount") {
		t.Errorf("Alloc in a tmp dir: err = %v, want 'not a hugetlbfs mount'", err)
	}
}

func TestMountsListsHugetlbfs(t *testing.T) {
	dir := hugetlbfsMount(t)
	ms, err := hugepage.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Path == dir {
			if m.PageSize != hugepage.Page2M {
				t.Errorf("mount %s has page size %s, want 2MiB", dir, m.PageSize)
			}
			return
		}
	}
	t.Errorf("Mounts() = %+v, does not list %s", ms, dir)
}

func TestAlloc4K(t *testing.T) {
	r := alloc(t, 10000, hugepage.Options{PageSize: hugepage.Page4K})
	if r.Len() != 12288 || r.PageSize() != hugepage.Page4K {
		t.Errorf("got %d bytes of %s pages, want 12288 bytes of 4KiB pages", r.Len(), r.PageSize())
	}
	if got := kernelPageSize(t, r.Addr()); got != hugepage.Page4K {
		t.Errorf("kernel backs the region with %s pages, want 4KiB", got)
	}
	fill(r.Bytes(), 1)
	if err := check(r.Bytes(), 1); err != nil {
		t.Error(err)
	}
}

// TestShareBySCMRights sends a region's descriptor over a unix socket, as a
// vhost-user front end does, and maps it again on the other side: both
// mappings must show the same memory.
func TestShareBySCMRights(t *testing.T) {
	for _, page := range []hugepage.PageSize{hugepage.Page2M, hugepage.Page4K} {
		t.Run(page.String(), func(t *testing.T) {
			r := alloc(t, 2*uint64(page), hugepage.Options{PageSize: page})
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fds[0])
			defer unix.Close(fds[1])
			if err := unix.Sendmsg(fds[0], []byte{1}, unix.UnixRights(r.FD()), nil, 0); err != nil {
				t.Fatal(err)
			}
			oob := make([]byte, unix.CmsgSpace(4))
			_, oobn, _, _, err := unix.Recvmsg(fds[1], make([]byte, 1), oob, unix.MSG_CMSG_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil || len(msgs) != 1 {
				t.Fatalf("control messages %v, %v", msgs, err)
			}
			got, err := unix.ParseUnixRights(&msgs[0])
			if err != nil || len(got) != 1 {
				t.Fatalf("rights %v, %v", got, err)
			}
			// Map only the second page, as a memory table entry with an
			// offset would.
			peer, err := hugepage.Open(got[0], uint64(page), uint64(page))
			if err != nil {
				unix.Close(got[0])
				t.Fatal(err)
			}
			defer peer.Close()
			if peer.PageSize() != page || peer.Len() != int(page) {
				t.Errorf("peer sees %d bytes of %s pages, want %d of %s", peer.Len(), peer.PageSize(), page, page)
			}
			if peer.Addr() == r.Addr() {
				t.Fatal("peer mapping has the same address as the original")
			}
			second := r.Bytes()[page:]
			fill(second, 0x11)
			if err := check(peer.Bytes(), 0x11); err != nil {
				t.Errorf("peer does not see the writer's bytes: %v", err)
			}
			fill(peer.Bytes(), 0x22)
			if err := check(second, 0x22); err != nil {
				t.Errorf("writer does not see the peer's bytes: %v", err)
			}
		})
	}
}

func TestOpenRejectsBadRanges(t *testing.T) {
	r := alloc(t, 2<<20, hugepage.Options{})
	dup := func() int {
		fd, err := unix.Dup(r.FD())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) }) // harmless EBADF if Open took it
		return fd
	}
	cases := []struct {
		name         string
		offset, size uint64
		want         string
	}{
		{"past end", 0, 4 << 20, "outside"},
		{"offset past end", 2 << 20, 1, "outside"},
		{"wrapping", 1 << 63, 1 << 63, "outside"},
		{"unaligned offset", 4096, 4096, "not a multiple"},
		{"empty", 0, 0, "empty"},
	}
	for _, c := range cases {
		_, err := hugepage.Open(dup(), c.offset, c.size)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Open(offset %#x, size %#x) err = %v, want %q", c.name, c.offset, c.size, err, c.want)
		}
	}
}

// TestShortageIsAClearError asks for more 2 MiB pages than the pool could
// ever hold. The answer must be an error naming the numbers and the fix, not
// a SIGBUS.
func TestShortageIsAClearError(t *testing.T) {
	st, err := hugepage.StatusOf(hugepage.Page2M)
	if err != nil {
		t.Fatal(err)
	}
	if st.Total == 0 {
		t.Fatal("no 2 MiB hugepages are reserved; the tests need some: echo 128 | sudo tee /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
	}
	need := st.Total + st.Overcommit + 1 // more than the pool can hold
	_, err = hugepage.Alloc(need*uint64(hugepage.Page2M), hugepage.Options{PageSize: hugepage.Page2M})
	assertShortage(t, err, hugepage.Page2M, need)
}

func assertShortage(t *testing.T, err error, page hugepage.PageSize, need uint64) {
	t.Helper()
	if !errors.Is(err, hugepage.ErrNoHugepages) {
		t.Fatalf("err = %v, want ErrNoHugepages", err)
	}
	var se *hugepage.ShortageError
	if !errors.As(err, &se) {
		t.Fatalf("err %T is not a *ShortageError", err)
	}
	if se.Need != need || se.Status.Size != page {
		t.Errorf("ShortageError reports %d x %s pages, want %d x %s", se.Need, se.Status.Size, need, page)
	}
	msg := err.Error()
	sysfs := "/sys/kernel/mm/hugepages/hugepages-" + map[hugepage.PageSize]string{hugepage.Page2M: "2048kB", hugepage.Page1G: "1048576kB"}[page] + "/nr_hugepages"
	for _, want := range []string{"need " + strconv.FormatUint(need, 10), "free", "echo ", "sudo tee " + sysfs} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
}

func TestGigantic1G(t *testing.T) {
	st, err := hugepage.StatusOf(hugepage.Page1G)
	if errors.Is(err, hugepage.ErrPageSizeUnsupported) {
		// The CPU or kernel lacks 1 GiB pages: Alloc must say so.
		_, aerr := hugepage.Alloc(1<<30, hugepage.Options{PageSize: hugepage.Page1G})
		if !errors.Is(aerr, hugepage.ErrPageSizeUnsupported) {
			t.Fatalf("Alloc of 1GiB pages where none exist: err = %v, want ErrPageSizeUnsupported", aerr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.Available() > 0 {
		// Pages are reserved on this machine: the allocation must work.
		r := alloc(t, 1<<30, hugepage.Options{PageSize: hugepage.Page1G})
		if got := kernelPageSize(t, r.Addr()); got != hugepage.Page1G {
			t.Errorf("kernel backs the region with %s pages, want 1GiB", got)
		}
		return
	}
	_, err = hugepage.Alloc(1<<30, hugepage.Options{PageSize: hugepage.Page1G})
	assertShortage(t, err, hugepage.Page1G, 1)
	if !strings.Contains(err.Error(), "hugepagesz=1G") {
		t.Errorf("message %q does not mention the boot-time reservation", err)
	}
}

func TestUnsupportedPageSize(t *testing.T) {
	for _, p := range []hugepage.PageSize{64 << 10, 3 << 20, 1024} {
		_, err := hugepage.Alloc(4<<20, hugepage.Options{PageSize: p})
		if !errors.Is(err, hugepage.ErrPageSizeUnsupported) {
			t.Errorf("PageSize %s: err = %v, want ErrPageSizeUnsupported", p, err)
		}
	}
	if _, err := hugepage.Alloc(0, hugepage.Options{}); err == nil {
		t.Error("Alloc(0) succeeded")
	}
}

func TestMapIntoAndUnmap(t *testing.T) {
	r := alloc(t, 4<<20, hugepage.Options{})
	m := newFakeMapper()
	if _, mapped := r.IOVA(); mapped {
		t.Fatal("fresh region reports being mapped")
	}
	if err := r.MapInto(m, hugepage.DefaultIOVABase+4096); err == nil {
		t.Error("MapInto at an IOVA not aligned to 2MiB succeeded")
	}
	const iova = hugepage.DefaultIOVABase + 2<<20
	if err := r.MapInto(m, iova); err != nil {
		t.Fatal(err)
	}
	if got, mapped := r.IOVA(); !mapped || got != iova {
		t.Errorf("IOVA() = %#x, %v; want %#x, true", got, mapped, iova)
	}
	if m.maps[iova] != 4<<20 {
		t.Errorf("domain holds %v, want [%#x] = 4MiB", m.maps, iova)
	}
	if err := r.MapInto(m, iova+8<<20); err == nil {
		t.Error("second MapInto succeeded")
	}
	if err := r.Unmap(); err != nil {
		t.Fatal(err)
	}
	if len(m.maps) != 0 {
		t.Errorf("domain still holds %v after Unmap", m.maps)
	}
	if err := r.Unmap(); err == nil {
		t.Error("Unmap of an unmapped region succeeded")
	}

	// A failing domain leaves the region unmapped and says why.
	m.failMap = errors.New("iommu says no")
	if err := r.MapInto(m, iova); err == nil || !strings.Contains(err.Error(), "iommu says no") {
		t.Errorf("MapInto on a failing domain: err = %v", err)
	}
	if _, mapped := r.IOVA(); mapped {
		t.Error("region reports mapped after a failed MapInto")
	}
}

func TestCloseUnmapsAndReleases(t *testing.T) {
	r, err := hugepage.Alloc(2<<20, hugepage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := newFakeMapper()
	if err := r.MapInto(m, hugepage.DefaultIOVABase); err != nil {
		t.Fatal(err)
	}
	fd := r.FD()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if len(m.maps) != 0 {
		t.Errorf("Close left the IOMMU mapping %v", m.maps)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("fd %d still open after Close (fcntl err %v)", fd, err)
	}
	if r.Bytes() != nil || r.Addr() != 0 {
		t.Error("closed region still exposes memory")
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
