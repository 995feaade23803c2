package guest

import (
	"fmt"
	"net"

	"github.com/zcnet/zcnet/vhost"
)

// Frontend is the vhost-user client side of a connection.
type Frontend struct {
	c        *vhost.Conn
	replyAck bool
	// Log, if set, records every request sent (for order checks).
	Log []vhost.Request
}

// NewFrontend wraps a connected socket.
func NewFrontend(uc *net.UnixConn) (*Frontend, error) {
	c, err := vhost.NewConn(uc)
	if err != nil {
		return nil, err
	}
	return &Frontend{c: c}, nil
}

// Close closes the connection.
func (f *Frontend) Close() error { return f.c.Close() }

// Conn is the underlying message connection (for raw tests).
func (f *Frontend) Conn() *vhost.Conn { return f.c }

// EnableReplyAck makes every request without a reply of its own ask for a
// REPLY_ACK status, as QEMU does once REPLY_ACK is negotiated.
func (f *Frontend) EnableReplyAck(on bool) { f.replyAck = on }

func expectsReply(r vhost.Request) bool {
	switch r {
	case vhost.ReqGetFeatures, vhost.ReqGetProtocolFeatures, vhost.ReqGetVringBase,
		vhost.ReqGetQueueNum, vhost.ReqGetConfig, vhost.ReqGetStatus, vhost.ReqGetMaxMemSlots,
		vhost.ReqGetInflightFD:
		return true
	}
	return false
}

// Request sends one message and returns the reply payload (for requests
// that have one) or checks the REPLY_ACK status.
func (f *Frontend) Request(r vhost.Request, payload []byte, fds ...int) ([]byte, error) {
	p, got, err := f.RequestFDs(r, payload, fds...)
	closeAll(got)
	return p, err
}

// RequestFDs is Request that also returns the descriptors the reply
// carried (GET_INFLIGHT_FD's buffer); the caller owns them.
func (f *Frontend) RequestFDs(r vhost.Request, payload []byte, fds ...int) (reply []byte, replyFDs []int, err error) {
	flags := uint32(vhost.FlagVersion)
	ack := f.replyAck && !expectsReply(r)
	if ack {
		flags |= vhost.FlagNeedReply
	}
	f.Log = append(f.Log, r)
	if err := f.c.WriteMessage(vhost.Header{Request: r, Flags: flags}, payload, fds); err != nil {
		return nil, nil, err
	}
	if !ack && !expectsReply(r) {
		return nil, nil, nil
	}
	m, err := f.c.ReadMessage()
	if err != nil {
		return nil, nil, fmt.Errorf("guest: reply to %v: %w", r, err)
	}
	defer func() {
		if err != nil {
			closeAll(m.FDs)
		}
	}()
	if m.Request != r || m.Flags&vhost.FlagReply == 0 {
		return nil, nil, fmt.Errorf("guest: reply to %v came as %v flags %#x", r, m.Request, m.Flags)
	}
	if ack {
		st, err := vhost.DecodeU64(m.Payload)
		if err != nil {
			return nil, nil, err
		}
		if st != 0 {
			return nil, nil, fmt.Errorf("guest: back end refused %v (status %d)", r, st)
		}
	}
	return m.Payload, m.FDs, nil
}

// U64 sends a request whose reply is a u64.
func (f *Frontend) U64(r vhost.Request) (uint64, error) {
	p, err := f.Request(r, nil)
	if err != nil {
		return 0, err
	}
	return vhost.DecodeU64(p)
}
