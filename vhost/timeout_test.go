package vhost_test

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

func dialRaw(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return uc
}

// waitDropped waits up to limit for the back end to close c and returns
// how long that took.
func waitDropped(t *testing.T, c *net.UnixConn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(limit)); err != nil {
		t.Fatal(err)
	}
	var b [64]byte
	for {
		_, err := c.Read(b[:])
		if err == nil {
			continue // a reply to an earlier whole message
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			return time.Since(start)
		}
		t.Fatalf("the back end still holds the connection after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
}

// mustBeServed checks that a well-behaved front end connecting now gets
// the device set up.
func mustBeServed(t *testing.T, path string) {
	t.Helper()
	type result struct {
		g   *guest.Guest
		err error
	}
	done := make(chan result, 1)
	go func() {
		g, err := guest.Dial(path, guest.Options{})
		done <- result{g, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("a well-behaved front end after the dropped one: %v", r.err)
		}
		r.g.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a well-behaved front end is not served: the device is still held")
	}
}

func TestPartialMessageTimesOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	hdr := func(size uint32) []byte {
		b := make([]byte, vhost.HeaderSize)
		vhost.EncodeHeader(b, vhost.Header{Request: vhost.ReqSetMemTable, Flags: vhost.FlagVersion, Size: size})
		return b
	}
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"half a header", hdr(0)[:5]},
		{"10 of 100 payload bytes", append(hdr(100), make([]byte, 10)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := vhosttest.Serve(t, vhost.Config{Name: "hostile"}, vhost.WithMessageTimeout(timeout)).Path
			c := dialRaw(t, path)
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			// The front end now goes quiet, its connection open.
			took := waitDropped(t, c, timeout+3*time.Second)
			if took < timeout*3/4 {
				t.Errorf("dropped after %v, before the %v timeout", took, timeout)
			}
			mustBeServed(t, path)
		})
	}
}

// A front end silent between whole messages (QEMU for the life of a VM)
// is not dropped.
func TestIdleBetweenMessagesIsNotDropped(t *testing.T) {
	const timeout = 100 * time.Millisecond
	path := vhosttest.Serve(t, vhost.Config{Name: "hostile"}, vhost.WithMessageTimeout(timeout)).Path
	fe, err := guest.NewFrontend(dialRaw(t, path))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := fe.Request(vhost.ReqGetFeatures, nil); err != nil {
			t.Fatalf("request %d, after %v idle: %v", i, time.Duration(i)*5*timeout, err)
		}
		time.Sleep(5 * timeout)
	}
}

// A front end that keeps asking but never reads the replies is dropped
// once a reply cannot be delivered within the timeout.
func TestFrontEndNotReadingRepliesIsDropped(t *testing.T) {
	const timeout = 300 * time.Millisecond
	path := vhosttest.Serve(t, vhost.Config{Name: "hostile"}, vhost.WithMessageTimeout(timeout)).Path
	c := dialRaw(t, path)
	req := make([]byte, vhost.HeaderSize)
	vhost.EncodeHeader(req, vhost.Header{Request: vhost.ReqGetFeatures, Flags: vhost.FlagVersion})
	// Requests until the back end, blocked on replies nobody reads, stops
	// taking them, then until it drops the connection (EPIPE).
	if err := c.SetWriteDeadline(time.Now().Add(timeout + 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := c.Write(req); err != nil {
			if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
				break
			}
			t.Fatalf("the back end still holds a front end that reads nothing: %v", err)
		}
	}
	mustBeServed(t, path)
}
