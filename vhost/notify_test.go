package vhost_test

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// TestNotificationFdsMustBeEventfds: a pipe, a memfd or a socket as a
// call, err or kick descriptor is refused (a pipe's full buffer would block
// our writes for as long as the front end likes), and not kept.
func TestNotificationFdsMustBeEventfds(t *testing.T) {
	cfg, log := withRefusalLog(vhost.Config{})
	s := vhosttest.Serve(t, cfg)
	fe := ackedFrontend(t, s.Path)
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
