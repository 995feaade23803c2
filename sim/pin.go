package sim

import (
	"runtime/debug"

	"github.com/zcnet/zcnet/internal/memword"
	"golang.org/x/sys/unix"
)

// pinChunk is how much of a mapping faultIn asks mincore about at a time:
// one byte of vector per page, so 256 KiB of vector per GiB.
const pinChunk = 1 << 30

// faultIn fills this process's page tables for the pages of mem that its
// backing already holds, as VFIO's MAP_DMA does when it pins a mapping.
//
// Without it the model's first DMA into each page of a guest's memory
// (which vhost maps without populating) takes a page fault and, under a
// hypervisor that shadows page tables, a trap to it as well (see touch),
// on the data path. At the start of zcnet sim at 350 kpps that slowed the
// RX engine for 80 ms and the NIC's packet buffer overflowed: 22000
// frames dropped in the first 100 ms, 0 to 62 with this (and the FIFO's
// and the built-in guest's pages written up front). A card behind a real
// IOMMU writes into pages VFIO pinned at map time, through no CPU's page
// tables.
//
// Unlike VFIO it does not allocate the pages the backing lacks: a front
// end may hand over a sparse file as large as its memory limit, and on the
// simulator's machine that must not turn into that much RAM. A page the
// model then touches faults as before. Errors are ignored: this only moves
// page faults earlier, the data path works without it.
func faultIn(mem []byte) {
	ps := int(pageSize)
	vec, err := unix.Mmap(-1, 0, min(len(mem), pinChunk)/ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return
	}
	defer unix.Munmap(vec)
	for off := 0; off < len(mem); off += pinChunk {
		part := mem[off:min(len(mem), off+pinChunk)]
		n := len(part) / ps // MapDMA checked: whole pages
		if mincore(part, vec[:n]) != nil {
			return
		}
		for i := 0; i < n; {
			if vec[i]&1 == 0 {
				i++
				continue
			}
			j := i + 1
			for j < n && vec[j]&1 != 0 {
				j++
			}
			if unix.Madvise(part[i*ps:j*ps], unix.MADV_POPULATE_WRITE) == nil {
				touch(part[i*ps:j*ps], ps)
			}
			i = j
		}
	}
}

// mincore sets bit 0 of vec[i] when the backing of mem holds page i. Both
// are mmapped memory (mem by vfio.DMAMapper's contract, vec by faultIn),
// which nothing moves, so passing their addresses as numbers is sound.
func mincore(mem, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, memword.Addr(mem), uintptr(len(mem)), memword.Addr(vec))
	if errno != 0 {
		return errno
	}
	return nil
}

// touch writes every page of mem once without changing it: an atomic OR
// of zero into its first word, which a concurrent writer (the guest) cannot
// lose a store to. Populating the page tables is not all of a first touch:
// under a hypervisor that shadows the guest's page tables, the first write
// to each page through a mapping still traps to it (at the start of zcnet
// sim at 350 kpps, the RX engine's copies into a populated guest mapping
// still took five times their later share of the CPU for the first 100
// ms). A page the front end truncated meanwhile raises SIGBUS: that ends
// the touch.
func touch(mem []byte, ps int) {
	prev := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(prev)
		if v := recover(); v != nil && !memoryFault(v) {
			panic(v)
		}
	}()
	for off := 0; off < len(mem); off += ps {
		memword.Or32(mem, off, 0)
	}
}
