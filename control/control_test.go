package control

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/vhost"
)

// TestMalformedRequestsAreRefused: whatever a client sends, it gets an
// answer naming what was wrong, and the server goes on answering; a
// client that sends nothing is cut off after the I/O allowance.
func TestMalformedRequestsAreRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := Listen(path, vhost.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(nil, "test", nil)
	s.Serve(l)
	defer s.Close()
	send := func(raw string) Response {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		c.(*net.UnixConn).CloseWrite()
		var resp Response
		if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
			t.Fatalf("no answer to %.40q: %v", raw, err)
		}
		return resp
	}
	for _, c := range []struct{ raw, want string }{
		{"", "empty request"},
		{"\n", "empty request"},
		{"{not json}\n", "not valid JSON"},
		{`{"command": "port-add", "extra": 1}` + "\n", `unknown field "extra"`},
		{`{"command": "port-frobnicate"}` + "\n", `unknown command "port-frobnicate"`},
		{`{}` + "\n", "no command"},
		{`{"command": "port-add"}` + "\n", "give the guest"},
		{`{"command": "port-del"}` + "\n", "give the guest's socket"},
		{`{"command": "reload"}` + "\n", "not started with --config"},
		{strings.Repeat(" ", maxRequest+10), "longer than"},
	} {
		resp := send(c.raw)
		if resp.OK || !strings.Contains(resp.Error, c.want) {
			t.Errorf("request %.40q: answer %+v, want an error saying %q", c.raw, resp, c.want)
		}
	}
	// A client that connects and says nothing does not hold the server
	// for longer than the I/O allowance.
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	done := make(chan Response, 1)
	go func() { done <- send(`{"command": "reload"}` + "\n") }()
	select {
	case resp := <-done:
		if took := time.Since(start); took > ioTimeout+2*time.Second || resp.OK {
			t.Fatalf("a request behind a silent client answered after %v: %+v", took, resp)
		}
	case <-time.After(ioTimeout + 5*time.Second):
		t.Fatal("a silent client holds the control socket")
	}
}
