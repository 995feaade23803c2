package vhost

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Mark sets exactly the bits of the pages a range touches, at any log
// offset (the words it ORs are aligned to the mapping, not to the log),
// across 32-page words, and never outside the log.
func TestDirtyLogMarkBoundaries(t *testing.T) {
	for _, base := range []uint64{0, 3, 4096 + 5} {
		fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		const size = 16 // 128 pages
		if err := unix.Ftruncate(fd, int64(base+size)); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
			t.Fatal(err)
		}
		l, err := mapDirtyLog(fd, size, base, size)
		if err != nil {
			t.Fatal(err)
		}
		bits := func() []uint64 {
			var out []uint64
			for p := range uint64(8 * size) {
				if l.mapping[l.base+int(p/8)]&(1<<(p%8)) != 0 {
					out = append(out, p)
				}
			}
			clear(l.mapping)
			return out
		}
		for _, c := range []struct {
			gpa, n uint64
			want   []uint64
		}{
			{0, 1, []uint64{0}},
			{4095, 2, []uint64{0, 1}},
			{4096, 4096, []uint64{1}},
			{30 * 4096, 4*4096 + 1, []uint64{30, 31, 32, 33, 34}},
			{7 * 4096, 2 * 4096, []uint64{7, 8}},
			{5 * 4096, 0, nil},
			{127 * 4096, 10 * 4096, []uint64{127}}, // the rest is beyond the log
			{1 << 40, 4096, nil},
			{^uint64(0) - 10, 100, nil}, // wraps
		} {
			before := l.outside
			l.Mark(c.gpa, c.n)
			got := bits()
			if len(got) != len(c.want) {
				t.Fatalf("base %d: Mark(%#x, %#x) set pages %v, want %v", base, c.gpa, c.n, got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("base %d: Mark(%#x, %#x) set pages %v, want %v", base, c.gpa, c.n, got, c.want)
				}
			}
			if c.gpa >= 128*4096 && l.outside == before {
				t.Fatalf("Mark(%#x) beyond the log not counted", c.gpa)
			}
		}
		// Bits the front end set stay set.
		l.mapping[l.base] = 0x80
		l.Mark(0, 1)
		if l.mapping[l.base] != 0x81 {
			t.Fatalf("byte %#x after marking page 0 over page 7", l.mapping[l.base])
		}
		if err := l.unmap(); err != nil {
			t.Fatal(err)
		}
	}
}
