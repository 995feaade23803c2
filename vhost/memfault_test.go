package vhost_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// TestRingStartOnTruncatedMemoryDropsTheSession: a front end hands over
// hugetlbfs memory (which cannot be sealed), truncates it, then starts a
// ring, which makes the back end read the ring's used index from memory
// that is gone. The fault must end that session only: the process lives
// and the next front end is served.
func TestRingStartOnTruncatedMemoryDropsTheSession(t *testing.T) {
	s := serveMem(t, vhost.Config{})
	mem, err := guest.NewMemory(guest.MemoryOptions{Hugetlb: true, Unsealed: true})
	if err != nil {
		t.Fatalf("hugetlb guest memory (make hugepages reserves it): %v", err)
	}
	closeMem := sync.OnceValue(mem.Close)
	defer closeMem()
	const size = 256
	desc, err := mem.Alloc(16*size, 16)
	if err != nil {
		t.Fatal(err)
	}
	avail, _ := mem.Alloc(6+2*size, 2)
	used, err := mem.Alloc(6+8*size, 4)
	if err != nil {
		t.Fatal(err)
	}
	fe := ackedFrontend(t, s.Path)
	for _, r := range []struct {
		req     vhost.Request
		payload []byte
	}{
		{vhost.ReqSetOwner, nil},
		{vhost.ReqSetFeatures, vhost.EncodeU64(vhost.FVersion1 | vhost.FProtocolFeatures)},
		{vhost.ReqSetMemTable, vhost.EncodeMemTable(mem.Regions())},
		{vhost.ReqSetVringNum, vhost.EncodeVringState(vhost.VringState{Index: 0, Num: size})},
		{vhost.ReqSetVringAddr, vhost.EncodeVringAddr(vhost.VringAddr{Index: 0,
			Desc: mem.UVA(desc), Avail: mem.UVA(avail), Used: mem.UVA(used)})},
	} {
		var fds []int
		if r.req == vhost.ReqSetMemTable {
			fds = []int{mem.FD()}
		}
		if _, err := fe.Request(r.req, r.payload, fds...); err != nil {
			t.Fatalf("%v: %v", r.req, err)
		}
	}
	if err := unix.Ftruncate(mem.FD(), 0); err != nil {
		t.Fatal(err)
	}
	// The kick completes the ring: the back end starts it and reads used->idx.
	_, err = fe.Request(vhost.ReqSetVringKick, vhost.EncodeU64(0), eventFD(t))
	if err == nil {
		t.Fatal("ring start on truncated memory acknowledged; want the connection dropped")
	}
	waitDisconnected(t, s.Dev)
	var found bool
	for _, e := range s.logs.TakeAll() {
		if msg := fmt.Sprint(e.ContextMap()["error"]); strings.Contains(msg, vhost.ErrGuestMemoryFault.Error()) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no log of the session dropped for a guest memory fault")
	}
	if n := s.hook.count(); n != 0 {
		t.Fatalf("%d regions still mapped after the faulting session", n)
	}
	closeMem()
	s.stillServes(t, openFDs(t))
}

// TestLoopbackContainsTruncatedMemory: the loopback data path polls a
// guest whose memory is then truncated. Its next poll faults; the fault
// must drop that session (counted), not kill the process, and the next
// front end must be served by the same loopback.
func TestLoopbackContainsTruncatedMemory(t *testing.T) {
	s := vhosttest.Serve(t, vhost.Config{})
	loop := vhosttest.NewLoopback(s.Dev)
	g, err := guest.Dial(s.Path, guest.Options{Memory: guest.MemoryOptions{Hugetlb: true, Unsealed: true}})
	if err != nil {
		t.Fatalf("guest with hugetlb memory (make hugepages reserves it): %v", err)
	}
	if err := g.PostRx(0, 8); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	if err := g.Transmit(0, vhost.NetHeader{}, frame); err != nil {
		t.Fatal(err)
	}
	loop.Poll()
	if pk, err := g.Receive(0); err != nil || len(pk) != 1 {
		t.Fatalf("loopback before the truncation: %d frames, %v", len(pk), err)
	}
	if err := unix.Ftruncate(g.Mem.FD(), 0); err != nil {
		t.Fatal(err)
	}
	loop.Poll() // reads the TX ring's avail index: faults
	waitDisconnected(t, s.Dev)
	if c := loop.Counters(); c.GuestMemoryFaults != 1 {
		t.Fatalf("loopback counters %+v, want one guest memory fault", c)
	}
	g.Close()

	g2, err := guest.Dial(s.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if err := g2.PostRx(0, 8); err != nil {
		t.Fatal(err)
	}
	if err := g2.Transmit(0, vhost.NetHeader{}, frame); err != nil {
		t.Fatal(err)
	}
	loop.Poll()
	if pk, err := g2.Receive(0); err != nil || len(pk) != 1 {
		t.Fatalf("loopback after the faulting session: %d frames, %v", len(pk), err)
	}
}
