package vhost_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
)

// TestNotificationFdsMustBeEventfds: a pipe, a memfd or a socket as a
// call, err or kick descriptor is refused (a pipe's full buffer would block
// our writes for as long as the front end likes), and not kept.
func TestNotificationFdsMustBeEventfds(t *testing.T) {
	cfg, log := withRefusalLog(vhost.Config{})
	s := serve(t, cfg)
	fe := ackedFrontend(t, s.path)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	mfd, err := unix.MemfdCreate("not-an-eventfd", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, fd := range []int{p[0], p[1], mfd, sp[0], sp[1]} {
			unix.Close(fd)
		}
	})
	refused := []int{p[1], mfd, sp[0]}
	fdsBefore := countFDs(t, refused)
	for _, c := range []struct {
		name string
		req  vhost.Request
		fd   int
	}{
		{"call pipe", vhost.ReqSetVringCall, p[1]},
		{"err pipe", vhost.ReqSetVringErr, p[1]},
		{"kick memfd", vhost.ReqSetVringKick, mfd},
		{"call socket", vhost.ReqSetVringCall, sp[0]},
	} {
		_, err := fe.Request(c.req, vhost.EncodeVringFile(0, false), c.fd)
		t.Run(c.name, func(t *testing.T) { log.refused(t, err, "not an eventfd") })
	}
	if n := countFDs(t, refused); n != fdsBefore {
		t.Errorf("the back end kept %d of the refused descriptors", n-fdsBefore)
	}
	if _, err := fe.Request(vhost.ReqSetVringCall, vhost.EncodeVringFile(0, false), eventFD(t)); err != nil {
		t.Fatalf("an eventfd was refused: %v", err)
	}
}

// countFDs counts the process's descriptors that refer to the same files
// as fds (other descriptors come and go with the runtime and other tests).
func countFDs(t *testing.T, fds []int) int {
	t.Helper()
	want := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil {
			t.Fatal(err)
		}
		want[l] = true
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && want[l] {
			n++
		}
	}
	return n
}

// TestBlockedCallFdDoesNotStallThePoller: the front end puts its call
// eventfd's counter at the maximum and switches the (shared) file
// description back to blocking mode, so that a write of 1 blocks until
// somebody reads it. The poller must go on moving frames, and the session
// must still end when the front end leaves, its descriptor released.
func TestBlockedCallFdDoesNotStallThePoller(t *testing.T) {
	fds := openFDs(t)
	e := newEcho(t)
	for i := range 2 {
		fd := e.g.CallFD(i)
		var max [8]byte
		binary.LittleEndian.PutUint64(max[:], 0xfffffffffffffffe)
		if _, err := unix.Write(fd, max[:]); err != nil {
			t.Fatal(err)
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan int)
	go func() {
		moved := 0
		for range 200 {
			e.loop.Poll()
			got, err := e.g.ReceiveInPlace(0, e.frames[:0])
			if err != nil {
				t.Error(err)
				break
			}
			for i := range got {
				if err := e.g.QueueTx(0, vhost.NetHeader{}, got[i].Frame); err != nil {
					t.Error(err)
				}
			}
			_ = e.g.FlushTx(0)
			_ = e.g.RefillRx(0, len(got))
			e.g.ReclaimTx(0)
			moved += len(got)
		}
		done <- moved
	}()
	select {
	case moved := <-done:
		if moved < 200 {
			t.Fatalf("the loop moved %d frames in 200 polls with the call fd blocked", moved)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poller is stuck: it blocked writing the front end's call eventfd")
	}
	e.g.Close()
	waitDisconnected(t, e.dev)
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := openFDs(t); n > fds {
		t.Fatalf("%d eventfds open after the front end left, %d before: the blocked notifier kept its descriptor", n, fds)
	}
}
