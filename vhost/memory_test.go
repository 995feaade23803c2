package vhost

import (
	"errors"
	"math"
	"testing"
)

func heapRegion(gpa, uva, size uint64) Region {
	return Region{GuestPhysAddr: gpa, UserAddr: uva, Size: size, Host: make([]byte, size)}
}

func TestTranslateBounds(t *testing.T) {
	tab, err := NewMemoryTable([]Region{heapRegion(0x1000, 0x7f0000001000, 0x1000), heapRegion(0x2000, 0x7f0000100000, 0x1000)})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		gpa, n uint64
		err    error
	}{
		{0x1000, 0x1000, nil},
		{0x1fff, 1, nil},
		{0x1fff, 2, ErrBadAddress}, // crosses into region 1: not contiguous on the host
		{0xfff, 1, ErrBadAddress},
		{0x3000, 1, ErrBadAddress},
		{math.MaxUint64, 2, ErrLengthWraps},
		{math.MaxUint64 - 0x10, 0x10, ErrBadAddress},
		{0x2000, math.MaxUint64 - 0x1000, ErrLengthWraps},
	}
	for _, c := range cases {
		b, err := tab.TranslateGPA(c.gpa, c.n)
		if !errors.Is(err, c.err) {
			t.Errorf("TranslateGPA(%#x, %#x) = %v, want %v", c.gpa, c.n, err, c.err)
		}
		if err == nil && uint64(len(b)) != c.n {
			t.Errorf("TranslateGPA(%#x, %#x) returned %d bytes", c.gpa, c.n, len(b))
		}
	}
	// User addresses use the other column.
	if _, err := tab.TranslateUVA(0x1000, 1); !errors.Is(err, ErrBadAddress) {
		t.Errorf("UVA lookup matched a guest physical address: %v", err)
	}
	b, err := tab.TranslateUVA(0x7f0000100010, 4)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 0xaa
	if tab.regions[1].Host[0x10] != 0xaa {
		t.Error("UVA translation does not alias region 1's host memory at the right offset")
	}
	var nilTab *MemoryTable
	if _, err := nilTab.TranslateGPA(0, 1); !errors.Is(err, ErrNoMemory) {
		t.Errorf("no table: %v", err)
	}
}

func TestAppendGPASplitsAcrossAdjacentRegions(t *testing.T) {
	tab, err := NewMemoryTable([]Region{heapRegion(0x0, 0x10000, 0x1000), heapRegion(0x1000, 0x50000, 0x1000)})
	if err != nil {
		t.Fatal(err)
	}
	segs, err := tab.AppendGPA(make([]Segment, 0, 4), 0xff0, 0x20, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 2 || len(segs[0].Buf) != 0x10 || len(segs[1].Buf) != 0x10 || segs[1].GPA != 0x1000 || !segs[1].Writable {
		t.Fatalf("segments %+v", segs)
	}
	if &segs[1].Buf[0] != &tab.regions[1].Host[0] {
		t.Error("second segment does not start region 1")
	}
	if _, err := tab.AppendGPA(make([]Segment, 0, 1), 0xff0, 0x20, false); !errors.Is(err, ErrTooManySegs) {
		t.Errorf("one-segment capacity: %v", err)
	}
	if _, err := tab.AppendGPA(make([]Segment, 0, 4), 0x1ff0, 0x20, false); !errors.Is(err, ErrBadAddress) {
		t.Errorf("range running off the end: %v", err)
	}
}

func TestMemoryTableRejectsOverlap(t *testing.T) {
	for _, regs := range [][]Region{
		{heapRegion(0, 0x10000, 0x2000), heapRegion(0x1000, 0x90000, 0x1000)},
		{heapRegion(0, 0x10000, 0x2000), heapRegion(0x8000, 0x11000, 0x1000)},
		{{GuestPhysAddr: 0, Size: 0x1000, Host: make([]byte, 10)}},
		{{GuestPhysAddr: math.MaxUint64 - 10, Size: 0x1000, Host: make([]byte, 0x1000)}},
	} {
		if _, err := NewMemoryTable(regs); !errors.Is(err, ErrRegionLayout) {
			t.Errorf("%+v accepted: %v", regs, err)
		}
	}
}

func TestNeedEvent(t *testing.T) {
	cases := []struct {
		event, new, old uint16
		want            bool
	}{
		{0, 1, 0, true},
		{5, 10, 3, true},
		{10, 10, 3, false},
		{9, 10, 9, true},
		{2, 10, 3, false},
		{0xffff, 2, 0xfffe, true}, // wraparound
		{0x8000, 2, 0xfffe, false},
	}
	for _, c := range cases {
		if got := NeedEvent(c.event, c.new, c.old); got != c.want {
			t.Errorf("NeedEvent(%d, %d, %d) = %v", c.event, c.new, c.old, got)
		}
	}
}

func TestNetHeaderRoundTrip(t *testing.T) {
	h := NetHeader{Flags: NetHdrFNeedsCsum, GSOType: NetHdrGSOTCPv6, HdrLen: 74, GSOSize: 1440, CsumStart: 54, CsumOffset: 16, NumBuffers: 3}
	var b [NetHeaderSize]byte
	if n, err := h.Encode(b[:], NetHeaderSize); err != nil || n != 12 {
		t.Fatal(n, err)
	}
	if b[0] != 1 || b[1] != 4 || b[2] != 74 || b[4] != 0xa0 || b[5] != 0x05 || b[10] != 3 {
		t.Fatalf("layout % x", b)
	}
	got, err := DecodeNetHeader(b[:], NetHeaderSize)
	if err != nil || got != h {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	legacy, _ := DecodeNetHeader(b[:], LegacyNetHeaderSize)
	if legacy.NumBuffers != 0 || legacy.GSOSize != h.GSOSize {
		t.Fatalf("legacy decode %+v", legacy)
	}
	if _, err := DecodeNetHeader(b[:9], LegacyNetHeaderSize); !errors.Is(err, ErrShortNetHeader) {
		t.Fatalf("short header: err = %v, want ErrShortNetHeader", err)
	}
	if NetHeaderLen(0) != 10 || NetHeaderLen(FVersion1) != 12 || NetHeaderLen(NetFMrgRxbuf) != 12 {
		t.Fatal("header length per feature set")
	}
}
