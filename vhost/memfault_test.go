package vhost_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
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
	fe := ackedFrontend(t, s.path)
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
	waitDisconnected(t, s.dev)
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
