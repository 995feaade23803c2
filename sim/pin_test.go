package sim

import (
	"encoding/binary"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// presentPages reports, per page of mem, whether this process's page
// tables map it (bit 63 of its /proc/self/pagemap entry).
func presentPages(t *testing.T, mem []byte) []bool {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatalf("open pagemap: %v", err)
	}
	defer f.Close()
	ps := int(pageSize)
	out := make([]bool, len(mem)/ps)
	entry := make([]byte, 8)
	for i := range out {
		va := uint64(addressOf(mem)) + uint64(i*ps)
		if _, err := f.ReadAt(entry, int64(va/pageSize*8)); err != nil {
			t.Fatalf("read pagemap: %v", err)
		}
		out[i] = binary.LittleEndian.Uint64(entry)>>63 != 0
	}
	return out
}

// TestMapDMAFaultsInHeldPages: mapping a front end's memory fills this
// process's page tables for the pages its file holds, as VFIO's pinning
// does, so the model's first DMA into them pays no page fault; the file's
// holes stay holes (a sparse file as large as a guest's memory limit must
// not become that much RAM), and what the pages hold is unchanged.
func TestMapDMAFaultsInHeldPages(t *testing.T) {
	const pages = 16
	ps := int(pageSize)
	fd, err := unix.MemfdCreate("sim-pin", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, int64(pages*ps)); err != nil {
		t.Fatal(err)
	}
	// The front end's view writes the first half; the second is a hole.
	front, err := unix.Mmap(fd, 0, pages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(front)
	for i := range pages / 2 {
		front[i*ps] = byte(i + 1)
	}
	var before unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		t.Fatal(err)
	}
	back, err := unix.Mmap(fd, 0, pages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(back)
	for i, p := range presentPages(t, back) {
		if p {
			t.Fatalf("page %d mapped before MapDMA: the test cannot tell", i)
		}
	}
	if err := NewPF(DefaultOptions()).DMA().MapDMA(0x100000, back); err != nil {
		t.Fatal(err)
	}
	for i, p := range presentPages(t, back) {
		if want := i < pages/2; p != want {
			t.Errorf("page %d: mapped %v after MapDMA, want %v (held by the file: %v)", i, p, want, want)
		}
	}
	var after unix.Stat_t
	if err := unix.Fstat(fd, &after); err != nil {
		t.Fatal(err)
	}
	if after.Blocks != before.Blocks {
		t.Errorf("the file holds %d blocks after MapDMA, %d before: holes were filled", after.Blocks, before.Blocks)
	}
	for i := range pages / 2 {
		if got := front[i*ps]; got != byte(i+1) {
			t.Errorf("page %d holds %d after MapDMA, want %d", i, got, i+1)
		}
	}
}

// TestMapDMAReadOnlyMemory: memory the process may only read is mapped as
// before; the fault-in leaves it alone rather than writing into it (which
// would kill the process).
func TestMapDMAReadOnlyMemory(t *testing.T) {
	ps := int(pageSize)
	fd, err := unix.MemfdCreate("sim-pin-ro", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, make([]byte, 4*ps)); err != nil {
		t.Fatal(err)
	}
	ro, err := unix.Mmap(fd, 0, 4*ps, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(ro)
	if err := NewPF(DefaultOptions()).DMA().MapDMA(0x100000, ro); err != nil {
		t.Fatal(err)
	}
}
