package vhost_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// Offsets in a packed ring's inflight region (QueueRegionPacked).
const (
	pkHdr      = 32
	pkDesc     = 32
	pkFreeHead = 12
	pkOldFree  = 14
	pkUsed     = 16
	pkOldUsed  = 18
	pkWrap     = 20
)

func pkEntry(e int) int { return pkHdr + pkDesc*e }

// packedOptions are the guest layouts the packed tests run with: one
// descriptor per frame, three (header and two halves), an indirect table.
var packedOptions = []struct {
	name string
	opt  guest.Options
}{
	{"direct", guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked}},
	{"chained", guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked, TxSplit: true}},
	{"indirect", guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked, TxSplit: true, TxIndirect: true}},
}

// inflightIDs returns the buffer ids of the chains a packed region marks
// inflight (the id in the last entry of each).
func inflightIDs(r []byte) []uint16 {
	var ids []uint16
	for h := range 64 {
		if r[pkEntry(h)] != 1 {
			continue
		}
		e := h
		for range binary.LittleEndian.Uint16(r[pkEntry(h)+6:]) - 1 {
			e = int(binary.LittleEndian.Uint16(r[pkEntry(e)+2:]))
		}
		ids = append(ids, binary.LittleEndian.Uint16(r[pkEntry(e)+16:]))
	}
	slices.Sort(ids)
	return ids
}

func heads(ps []popped) []uint16 {
	var h []uint16
	for _, p := range ps {
		h = append(h, p.head)
	}
	return h
}

func TestInflightGetFDPacked(t *testing.T) {
	s := startSession(t, packedOptions[0].opt, 0, 0)
	// 32-byte header and 32 bytes per descriptor, each queue's region
	// 64-byte aligned: 2 * 2112.
	if want := uint64(2 * 2112); s.g.InflightSize != want || vhost.InflightBytesPacked(2, 64) != want {
		t.Fatalf("packed GET_INFLIGHT_FD gave %d bytes (InflightBytesPacked %d), want %d",
			s.g.InflightSize, vhost.InflightBytesPacked(2, 64), want)
	}
	// The ring started on a zeroed buffer: version 1, desc_num, a free
	// list through every entry, used positions those of the ring.
	r := s.txRegion(t)
	if v, n := binary.LittleEndian.Uint16(r[8:]), binary.LittleEndian.Uint16(r[10:]); v != 1 || n != 64 {
		t.Fatalf("region version %d desc_num %d, want 1 and 64", v, n)
	}
	if r[pkWrap] != 1 || r[pkWrap+1] != 1 {
		t.Fatalf("used wrap counters %d/%d, want 1/1 (a new ring)", r[pkWrap], r[pkWrap+1])
	}
	for e := range 64 {
		if nx := binary.LittleEndian.Uint16(r[pkEntry(e)+2:]); nx != uint16(e+1) {
			t.Fatalf("entry %d links to %d, want %d", e, nx, e+1)
		}
	}
}

// TestInflightResumePacked: as TestInflightResumeSplit, on a packed ring,
// where the slots of completed chains overwrite those of chains taken
// before them: the resubmitted chains come from the region's copies.
func TestInflightResumePacked(t *testing.T) {
	for _, o := range packedOptions {
		t.Run(o.name, func(t *testing.T) {
			s := restartSessionWith(t, o.opt, 10, 1, 6, 1, 4)
			wantIDs := slices.Sorted(slices.Values(heads(s.unfinished(1, 4, 6))))
			if got := inflightIDs(s.txRegion(t)); !slices.Equal(got, wantIDs) {
				t.Fatalf("the region marks buffers %v inflight, want %v", got, wantIDs)
			}
			dev, got := s.resumeTen(t)
			// Completed in reverse: the used descriptors go where the
			// driver expects them whatever the order.
			h := heads(got)
			slices.Reverse(h)
			pushTx(dev, h...)
			if n := s.g.ReclaimTx(0); n != len(got) {
				t.Fatalf("the guest got %d buffers back, want %d", n, len(got))
			}
			if more := popTx(t, dev, s.hdrLen, 10); len(more) != 0 {
				t.Fatalf("chains popped twice: %v", more)
			}
			if ids := inflightIDs(s.txRegion(t)); len(ids) != 0 {
				t.Fatalf("buffers %v still inflight after all were used", ids)
			}
			// A clean restart resubmits nothing, and the ring goes on.
			s.first1 = dev
			s.crash(t)
			dev, err := s.attach(t)
			if err != nil {
				t.Fatal(err)
			}
			if more := popTx(t, dev, s.hdrLen, 10); len(more) != 0 {
				t.Fatalf("a clean restart resubmitted %v", more)
			}
			if err := s.g.Transmit(0, vhost.NetHeader{}, txFrame(12)); err != nil {
				t.Fatal(err)
			}
			if got := popTx(t, dev, s.hdrLen, 10); len(got) != 1 || got[0].id != 12 {
				t.Fatalf("after a clean restart the back end popped %v, want frame 12", got)
			}
		})
	}
}

// TestInflightResumePackedMidFlush: the back end dies inside Flush, before
// the used descriptors are published (the batch is rolled back and
// resubmitted) or after (it is committed: not resubmitted, and the guest
// gets it).
func TestInflightResumePackedMidFlush(t *testing.T) {
	for _, published := range []bool{false, true} {
		for _, o := range packedOptions {
			name := o.name + "-before-publishing"
			if published {
				name = o.name + "-after-publishing"
			}
			t.Run(name, func(t *testing.T) {
				s := startSession(t, o.opt, 6, 0)
				dev := s.first1
				dev.LockDataPath()
				q := dev.TxQueue(0)
				for _, i := range []int{5, 0, 3} {
					q.Push(s.first[i].head, 0)
				}
				q.FlushCrashForTest(published)
				dev.UnlockDataPath()
				reclaimed := s.g.ReclaimTx(0)
				s.crash(t)
				want := s.first
				if published {
					want = []popped{s.first[1], s.first[2], s.first[4]}
					if reclaimed != 3 {
						t.Fatalf("the guest got %d buffers back from the published batch, want 3", reclaimed)
					}
				} else if reclaimed != 0 {
					t.Fatalf("the guest got %d buffers back from an unpublished batch", reclaimed)
				}
				dev, err := s.attach(t)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.g.Transmit(0, vhost.NetHeader{}, txFrame(6)); err != nil {
					t.Fatal(err)
				}
				got := popTx(t, dev, s.hdrLen, 100)
				if len(got) != len(want)+1 || !slices.Equal(got[:len(want)], want) || got[len(want)].id != 6 {
					t.Fatalf("after a crash inside Flush the restarted back end popped %v, want %v then frame 6", got, want)
				}
				pushTx(dev, heads(got)...)
				if n := s.g.ReclaimTx(0); n != len(got) {
					t.Fatalf("the guest got %d buffers back, want %d", n, len(got))
				}
			})
		}
	}
}

// TestInflightPackedRewind: chains given back with Unpop and RewindTo are
// no longer inflight, resubmitted ones given back are handed out again,
// and GET_VRING_BASE counts resubmitted chains not handed out again yet.
func TestInflightPackedRewind(t *testing.T) {
	s := restartSessionWith(t, packedOptions[1].opt, 4, 0, 2)
	dev, err := s.attach(t)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.g.Transmit(0, vhost.NetHeader{}, txFrame(4)); err != nil {
		t.Fatal(err)
	}
	dev.LockDataPath()
	q := dev.TxQueue(0)
	start := q.AvailPos()
	c := vhost.Chain{Segs: make([]vhost.Segment, 0, 8)}
	var got []uint16
	for range 4 { // three resubmitted, then frame 4
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatalf("Pop: %v %v", ok, err)
		}
		got = append(got, c.Head)
	}
	q.Unpop(1) // frame 4: not inflight any more
	q.RewindTo(start)
	var again []uint16
	for range 4 {
		if ok, err := q.Pop(&c); !ok || err != nil {
			t.Fatalf("Pop after the rewind: %v %v", ok, err)
		}
		again = append(again, c.Head)
	}
	if !slices.Equal(got, again) {
		t.Fatalf("after the rewind the back end popped %v, want %v again", again, got)
	}
	q.RewindTo(start)
	dev.UnlockDataPath()
	if ids := inflightIDs(s.txRegion(t)); !slices.Equal(ids, slices.Sorted(slices.Values(got[:3]))) {
		t.Fatalf("after the rewinds buffers %v are inflight, want the resubmitted %v", ids, got[:3])
	}
	// Stopped now, the ring reports the position after the resubmitted
	// chains: the next start finds them inflight and frame 4 available.
	base, err := s.g.StopRing(1)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint32(q.AvailPos()) + 9; base&0xffff != want {
		t.Fatalf("GET_VRING_BASE %#x, want avail position %#x (three chains of three slots past %#x)", base, want, q.AvailPos())
	}
}

// TestInflightHostileRegionPacked: as TestInflightHostileRegion, for a
// packed ring's region: refused with a clear reason, never a crash, never
// a buffer id outside the ring or a buffer outside guest memory handed
// out; garbage counters only change the order.
func TestInflightHostileRegionPacked(t *testing.T) {
	u16 := binary.LittleEndian.PutUint16
	// inflightHead is the head entry of the chain of frame i (entries
	// are handed out in pop order from a new buffer's free list: frame i
	// of 3 descriptors starts at entry 3i).
	inflightHead := func(i int) int { return 3 * i }
	for _, c := range []struct {
		name    string
		corrupt func(r []byte)
		want    string // "" : the ring starts
	}{
		{"version", func(r []byte) { r[8] = 2 }, "version 2"},
		{"desc-num", func(r []byte) { u16(r[10:], 128) }, "desc_num 128"},
		{"used-idx", func(r []byte) { u16(r[pkOldUsed:], 64) }, "out of range"},
		{"wrap-counter", func(r []byte) { r[pkWrap+1] = 2 }, "out of range"},
		{"free-head", func(r []byte) { u16(r[pkOldFree:], 65) }, "out of range"},
		{"flag-value", func(r []byte) { r[pkEntry(inflightHead(1)+1)] = 3 }, "flag 3"},
		{"chain-too-long", func(r []byte) { u16(r[pkEntry(inflightHead(1))+6:], 65) }, "chain of 65"},
		{"chain-link-out-of-range", func(r []byte) { u16(r[pkEntry(inflightHead(1))+2:], 0xffff) }, "entry 65535"},
		{"chains-share-entries", func(r []byte) { u16(r[pkEntry(inflightHead(2)+1)+2:], uint16(inflightHead(1)+2)) }, "another chain"},
		{"last-wrong", func(r []byte) { u16(r[pkEntry(inflightHead(1))+4:], 7) }, "its last says 7"},
		{"next-flag-missing", func(r []byte) { u16(r[pkEntry(inflightHead(1))+18:], 0) }, "flags"},
		{"indirect-in-chain", func(r []byte) { u16(r[pkEntry(inflightHead(1))+18:], 1|4) }, "flags"},
		{"id-out-of-range", func(r []byte) { u16(r[pkEntry(inflightHead(1)+2)+16:], 64) }, "buffer id 64"},
		{"id-twice", func(r []byte) {
			copy(r[pkEntry(inflightHead(2)+2)+16:pkEntry(inflightHead(2)+2)+18], r[pkEntry(inflightHead(1)+2)+16:])
		}, "taken twice"},
		{"buffer-outside-guest-memory", func(r []byte) {
			binary.LittleEndian.PutUint64(r[pkEntry(inflightHead(1)+1)+24:], 1<<50)
		}, "outside guest memory"},
		{"buffer-length-overflows", func(r []byte) {
			binary.LittleEndian.PutUint32(r[pkEntry(inflightHead(1)+1)+20:], 0xffffffff)
		}, "overflows"},
		{"more-inflight-than-available", func(r []byte) {
			// A copy of frame 1's chain in free entries, as a fourth
			// inflight chain with an unused buffer id: it claims three
			// ring slots the driver never filled.
			for k := range 3 {
				copy(r[pkEntry(50+k):pkEntry(51+k)], r[pkEntry(inflightHead(1)+k):pkEntry(inflightHead(1)+k+1)])
				u16(r[pkEntry(50+k)+2:], uint16(51+k))
			}
			u16(r[pkEntry(50)+4:], 52)
			u16(r[pkEntry(52)+16:], 40)
			u16(r[pkEntry(49)+2:], 53) // out of the free list
		}, "not made available"},
		{"garbage-counters", func(r []byte) {
			for h := range 64 {
				binary.LittleEndian.PutUint64(r[pkEntry(h)+8:], uint64(h)*0x9e3779b97f4a7c15)
			}
		}, ""},
		{"free-list-cut-short", func(r []byte) {
			// Entries lost from the free list (as a crash while
			// giving chains back can leave them) are found again: the
			// free list is rebuilt from what no inflight chain holds.
			u16(r[pkEntry(30)+2:], 64)
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Frames 0..5 of three descriptors; 0, 3 and 5 completed.
			s := restartSessionWith(t, packedOptions[1].opt, 6, 0, 0, 3, 5)
			r := s.txRegion(t)
			if got := r[pkEntry(inflightHead(1))]; got != 1 {
				t.Fatalf("frame 1's chain is not at entry %d", inflightHead(1))
			}
			c.corrupt(r)
			dev := s.attachHostile(t, c.want)
			if dev == nil {
				return
			}
			got := heads(popTx(t, dev, s.hdrLen, 100))
			want := heads([]popped{s.first[1], s.first[2], s.first[4]})
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("the restarted back end popped buffers %v, want %v in some order", got, want)
			}
			// Everything goes on: twenty new chains of three take 60 of
			// the 64 entries, every one of them tracked.
			pushTx(dev, got...)
			s.g.ReclaimTx(0)
			for i := 6; i < 26; i++ {
				if err := s.g.Transmit(0, vhost.NetHeader{}, txFrame(i)); err != nil {
					t.Fatal(err)
				}
			}
			more := popTx(t, dev, s.hdrLen, 100)
			if ids := inflightIDs(r); len(more) != 20 || len(ids) != 20 {
				t.Fatalf("popped %d new chains, %d of them tracked; want 20 and 20", len(more), len(ids))
			}
			pushTx(dev, heads(more)...)
			if n := s.g.ReclaimTx(0); n != 20 {
				t.Fatalf("the guest got %d buffers back, want 20", n)
			}
		})
	}
}
