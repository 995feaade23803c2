package hugepage

import (
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// PageSize is the size in bytes of the pages backing a Region.
type PageSize uint64

// The page sizes of x86-64. Page4K means ordinary memory (plain memfd); the
// others are hugetlb sizes, usable once the kernel has pages of that size
// reserved.
const (
	Page4K PageSize = 4 << 10
	Page2M PageSize = 2 << 20
	Page1G PageSize = 1 << 30
)

// String renders the size the way people write it: 4KiB, 2MiB, 1GiB.
func (p PageSize) String() string {
	switch {
	case p >= 1<<30 && p%(1<<30) == 0:
		return strconv.FormatUint(uint64(p)>>30, 10) + "GiB"
	case p >= 1<<20 && p%(1<<20) == 0:
		return strconv.FormatUint(uint64(p)>>20, 10) + "MiB"
	case p >= 1<<10 && p%(1<<10) == 0:
		return strconv.FormatUint(uint64(p)>>10, 10) + "KiB"
	}
	return strconv.FormatUint(uint64(p), 10) + "B"
}

// valid reports whether p is a power of two of at least 4 KiB, the only
// shapes a page can have.
func (p PageSize) valid() bool {
	return p >= Page4K && p&(p-1) == 0
}

// huge reports whether p is a hugetlb size rather than the base page size.
func (p PageSize) huge() bool { return p > Page4K }

// shift is log2(p); p must be valid.
func (p PageSize) shift() int { return bits.TrailingZeros64(uint64(p)) }

// sysfsDir is the kernel's directory for the hugepage size p.
func (p PageSize) sysfsDir() string {
	return filepath.Join(sysfsHugepages, fmt.Sprintf("hugepages-%dkB", uint64(p)>>10))
}

// ReserveCommand is the shell command that makes the kernel keep total pages
// of size p reserved. 1 GiB pages can rarely be found at run time once memory
// is fragmented, so for them the command is followed by the boot-time
// alternative.
func (p PageSize) ReserveCommand(total uint64) string {
	cmd := fmt.Sprintf("echo %d | sudo tee %s", total, filepath.Join(p.sysfsDir(), "nr_hugepages"))
	if p >= Page1G {
		cmd += fmt.Sprintf(" (or add to the kernel command line: hugepagesz=%s hugepages=%d)", p.kernelArg(), total)
	}
	return cmd
}

// kernelArg spells p as the kernel command line does (2M, 1G).
func (p PageSize) kernelArg() string {
	if p >= 1<<30 {
		return strconv.FormatUint(uint64(p)>>30, 10) + "G"
	}
	return strconv.FormatUint(uint64(p)>>20, 10) + "M"
}

// sysfsHugepages is where the kernel publishes its hugepage pools. It is a
// variable so tests can point it at a fabricated tree.
var sysfsHugepages = "/sys/kernel/mm/hugepages"

// PageStatus is the kernel's account of one hugepage size, as published in
// /sys/kernel/mm/hugepages/hugepages-<size>kB.
type PageStatus struct {
	Size PageSize
	// Total is nr_hugepages: pages in the persistent pool.
	Total uint64
	// Free is free_hugepages: pages not faulted into any mapping. Some of
	// them may already be promised to mappings (Reserved).
	Free uint64
	// Reserved is resv_hugepages: free pages promised to existing mappings
	// that have not touched them yet.
	Reserved uint64
	// Surplus is surplus_hugepages: pages allocated beyond Total because
	// overcommit allowed it.
	Surplus uint64
	// Overcommit is nr_overcommit_hugepages: how many surplus pages the
	// kernel may allocate on demand.
	Overcommit uint64
}

// Available is the most pages a new allocation can hope to get: the free
// pages nobody has been promised, plus the surplus the kernel may still
// allocate on demand (which can fail if memory is fragmented).
func (s PageStatus) Available() uint64 {
	n := uint64(0)
	if s.Free > s.Reserved {
		n = s.Free - s.Reserved
	}
	if s.Overcommit > s.Surplus {
		n += s.Overcommit - s.Surplus
	}
	return n
}

// Status lists every hugepage size the kernel supports, smallest first, with
// its counters. It is what `zcnet probe` prints.
func Status() ([]PageStatus, error) {
	entries, err := os.ReadDir(sysfsHugepages)
	if err != nil {
		return nil, fmt.Errorf("hugepage: list page sizes: %w (is hugetlb support built into the kernel?)", err)
	}
	var out []PageStatus
	for _, e := range entries {
		kb, ok := strings.CutPrefix(e.Name(), "hugepages-")
		if !ok {
			continue
		}
		kb, ok = strings.CutSuffix(kb, "kB")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(kb, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("hugepage: unexpected entry %q in %s", e.Name(), sysfsHugepages)
		}
		s, err := StatusOf(PageSize(n << 10))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Size < out[j].Size })
	return out, nil
}

// Sizes lists the hugepage sizes the kernel supports, smallest first,
// whether or not any pages of that size are reserved.
func Sizes() ([]PageSize, error) {
	st, err := Status()
	if err != nil {
		return nil, err
	}
	sizes := make([]PageSize, len(st))
	for i, s := range st {
		sizes[i] = s.Size
	}
	return sizes, nil
}

// StatusOf reads the counters of one hugepage size. A size the kernel (or
// the CPU) does not support yields an error matching ErrPageSizeUnsupported.
func StatusOf(size PageSize) (PageStatus, error) {
	if !size.valid() || !size.huge() {
		return PageStatus{}, fmt.Errorf("hugepage: %s is not a hugepage size: %w", size, ErrPageSizeUnsupported)
	}
	dir := size.sysfsDir()
	s := PageStatus{Size: size}
	for _, c := range []struct {
		name string
		dst  *uint64
	}{
		{"nr_hugepages", &s.Total},
		{"free_hugepages", &s.Free},
		{"resv_hugepages", &s.Reserved},
		{"surplus_hugepages", &s.Surplus},
		{"nr_overcommit_hugepages", &s.Overcommit},
	} {
		v, err := readCounter(filepath.Join(dir, c.name))
		if errors.Is(err, fs.ErrNotExist) {
			return PageStatus{}, fmt.Errorf("hugepage: the kernel offers no %s pages (%s missing): %w",
				size, dir, ErrPageSizeUnsupported)
		}
		if err != nil {
			return PageStatus{}, fmt.Errorf("hugepage: read %s counters: %w", size, err)
		}
		*c.dst = v
	}
	return s, nil
}

func readCounter(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}
