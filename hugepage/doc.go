// Package hugepage provides the pinned memory zcnet's devices DMA into, and
// the bookkeeping around it.
//
// It has three jobs, each independent of NICs and virtio:
//
//   - Region: a shared memory mapping backed by a file descriptor, from 2 MiB
//     or 1 GiB hugepages (memfd_create(MFD_HUGETLB) or a file in a hugetlbfs
//     mount) or from ordinary 4 KiB pages (plain memfd_create, for tests and
//     for guest memory handed over by a vhost-user front end). The descriptor
//     can be passed to another process; MapInto makes the region reachable by
//     a device through an IOMMU domain.
//   - IOVAAllocator: hands out non-overlapping, aligned ranges of one IOMMU
//     domain's I/O virtual address space.
//   - Pool: fixed-size packet buffers carved out of a Region, handed out and
//     taken back by index in bulk without allocating or locking.
//
// # Why regions are not mlocked
//
// A device must find a buffer at the physical address the IOMMU was told
// about for as long as the mapping exists. Two facts make that hold without
// mlock. Hugetlb pages are never on the kernel's LRU lists, so they are never
// swapped or reclaimed, and the kernel ignores mlock on hugetlb mappings
// anyway (mlock_fixup skips them). And VFIO_IOMMU_MAP_DMA pins every page it
// maps (pin_user_pages with FOLL_LONGTERM) until the matching unmap, which is
// what keeps 4 KiB pages resident and unmoved while a device can reach them;
// mlock would add nothing but a second charge against RLIMIT_MEMLOCK.
//
// What the package does instead is make every page exist before the mapping
// is used: mmap reserves the hugepages all or nothing (a shortage is ENOMEM,
// not a SIGBUS on first touch), MAP_POPULATE fills the page tables up front
// so the hot path never takes a fault, and fallocate then guarantees that no
// page is missing even where populating failed silently.
//
// # Hugepage reservation
//
// Hugepages come from a pool the administrator reserves in
// /sys/kernel/mm/hugepages/hugepages-<size>kB/nr_hugepages. When a request
// cannot be met, Alloc returns a *ShortageError that says how many pages were
// needed, how many are free, and the command that reserves more.
package hugepage
