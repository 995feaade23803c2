package hugepage_test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/hugepage"
)

// kernelPageSize reads from /proc/self/smaps the page size the kernel uses
// for the mapping that contains addr: the proof that memory really is backed
// by hugepages, whatever the package says about itself.
func kernelPageSize(t *testing.T, addr uintptr) hugepage.PageSize {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatalf("open smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inside := false
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, hi, ok := strings.Cut(fields[0], "-")
			if ok {
				l, err1 := strconv.ParseUint(lo, 16, 64)
				h, err2 := strconv.ParseUint(hi, 16, 64)
				inside = err1 == nil && err2 == nil && uint64(addr) >= l && uint64(addr) < h
				continue
			}
		}
		if inside && len(fields) == 3 && fields[0] == "KernelPageSize:" {
			kb, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			return hugepage.PageSize(kb << 10)
		}
	}
	t.Fatalf("no mapping contains %#x in /proc/self/smaps", addr)
	return 0
}

// hugetlbfsMount returns a hugetlbfs mount serving 2 MiB pages: an existing
// one, or one the test mounts on a temporary directory (we run as root) and
// unmounts when done.
func hugetlbfsMount(t *testing.T) string {
	t.Helper()
	if dir, err := hugepage.FindMount(hugepage.Page2M); err == nil {
		return dir
	}
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "hugetlbfs", 0, "pagesize=2M"); err != nil {
		t.Fatalf("no hugetlbfs mount exists and mounting one on %s failed: %v (tests need root, or an existing mount: mount -t hugetlbfs none /dev/hugepages)", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// alloc is hugepage.Alloc that fails the test on error and closes the region
// when the test ends.
func alloc(t *testing.T, size uint64, opts hugepage.Options) *hugepage.Region {
	t.Helper()
	r, err := hugepage.Alloc(size, opts)
	if err != nil {
		t.Fatalf("Alloc(%d, %+v): %v", size, opts, err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// fill writes a pattern derived from seed into b; check verifies it.
func fill(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
}

func check(b []byte, seed byte) error {
	for i := range b {
		if want := byte(i*7) ^ seed; b[i] != want {
			return fmt.Errorf("byte %d is %#x, want %#x", i, b[i], want)
		}
	}
	return nil
}

// fakeMapper is an IOMMU domain that records its mappings and can be told to
// fail.
type fakeMapper struct {
	maps    map[uint64]uint64 // iova -> size
	failMap error
}

func newFakeMapper() *fakeMapper {
	return &fakeMapper{maps: map[uint64]uint64{}}
}

func (m *fakeMapper) MapDMA(iova uint64, mem []byte) error {
	if m.failMap != nil {
		return m.failMap
	}
	if _, ok := m.maps[iova]; ok {
		return fmt.Errorf("fake IOMMU: %#x already mapped", iova)
	}
	m.maps[iova] = uint64(len(mem))
	return nil
}

func (m *fakeMapper) UnmapDMA(iova, size uint64) error {
	if got, ok := m.maps[iova]; !ok || got != size {
		return fmt.Errorf("fake IOMMU: unmap [%#x, +%#x) does not match a mapping", iova, size)
	}
	delete(m.maps, iova)
	return nil
}
