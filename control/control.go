// Package control is zcnet's runtime control plane: a unix socket on
// which a running instance takes requests to add, remove, list and show
// guests and to read its counters, as ovs-vswitchd takes ovs-vsctl's.
//
// The protocol is one JSON request per connection, terminated by a
// newline, answered by one JSON response:
//
//	{"command": "port-add", "nic": "0000:03:00.0", "guest": {"socket": "/run/vm1.sock", "mac": "52:54:00:12:34:56"}}
//	{"command": "port-del", "socket": "/run/vm1.sock"}
//	{"command": "port-list"}
//	{"command": "port-show", "socket": "/run/vm1.sock"}
//	{"command": "stats"}
//	{"command": "reload"}
//
// A response has "ok" and either the result or "error", a message for the
// operator. A request that fails changes nothing.
package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/zcnet/zcnet/appliance"
)

// Commands.
const (
	CommandPortAdd  = "port-add"
	CommandPortDel  = "port-del"
	CommandPortList = "port-list"
	CommandPortShow = "port-show"
	CommandStats    = "stats"
	CommandReload   = "reload"
)

// Request is one request.
type Request struct {
	Command string `json:"command"`
	// NIC is port-add's NIC port (its PCI address as configured; empty:
	// the first with a free guest slot).
	NIC   string               `json:"nic,omitempty"`
	Guest *appliance.GuestSpec `json:"guest,omitempty"`
	// Socket names the guest of port-del and port-show.
	Socket string `json:"socket,omitempty"`
}

// Response is the answer to a Request.
type Response struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Guest: port-add's new guest, port-show's guest.
	Guest *appliance.GuestInfo `json:"guest,omitempty"`
	// Guests and NICs: port-list.
	Guests []appliance.GuestInfo `json:"guests,omitempty"`
	NICs   []appliance.NICInfo   `json:"nics,omitempty"`
	// Ports: port-show's engine ports' counters, one per queue pair.
	Ports []appliance.PortCounters `json:"ports,omitempty"`
	// Snapshot: stats.
	Snapshot *appliance.Snapshot `json:"snapshot,omitempty"`
	// Changes: what reload did, one line each.
	Changes []string `json:"changes,omitempty"`
}

// maxRequest bounds a request: a guest's settings are a few hundred
// bytes.
const maxRequest = 64 << 10

// ioTimeout bounds how long a client may take to send its request or
// take its response.
const ioTimeout = 5 * time.Second

// ReadRequest reads one request from r, at most maxRequest bytes.
func ReadRequest(r io.Reader) (Request, error) {
	var req Request
	line, err := bufio.NewReader(io.LimitReader(r, maxRequest)).ReadBytes('\n')
	switch {
	case len(line) >= maxRequest:
		return req, fmt.Errorf("request longer than %d bytes", maxRequest)
	case err != nil && !errors.Is(err, io.EOF):
		return req, fmt.Errorf("reading the request: %w", err)
	case len(bytes.TrimSpace(line)) == 0:
		return req, errors.New("empty request: send one JSON object and a newline")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("request is not valid JSON: %w", err)
	}
	return req, nil
}

// Call sends req to the instance whose control socket is at path and
// returns its response; a refused request comes back as an error with the
// instance's message.
func Call(path string, req Request) (Response, error) {
	var resp Response
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return resp, fmt.Errorf("no zcnet instance at %s (is `zcnet run` running? give its --control path with --control): %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // adding a guest maps memory; removing one drains queues
	b, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return resp, fmt.Errorf("send to %s: %w", path, err)
	}
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return resp, fmt.Errorf("read the answer from %s: %w", path, err)
	}
	if !resp.OK {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
