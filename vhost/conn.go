package vhost

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMessageTimeout is how long the rest of a message may take to
// arrive once its first bytes have, and how long a reply may take to be
// taken by the peer. QEMU sends each message with one sendmsg, so a
// message that takes seconds to complete comes from a stalled or hostile
// peer.
const DefaultMessageTimeout = 5 * time.Second

// Conn is one vhost-user connection: message framing over a unix stream
// socket with descriptors passed as SCM_RIGHTS. The front end (sim/guest)
// and the back end both use it.
type Conn struct {
	uc  *net.UnixConn
	raw interface {
		Read(func(fd uintptr) bool) error
		Write(func(fd uintptr) bool) error
	}
	hdr [HeaderSize]byte
	oob []byte

	timeout time.Duration // see SetMessageTimeout
}

// NewConn wraps a connected unix stream socket.
func NewConn(uc *net.UnixConn) (*Conn, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("vhost: raw access to socket: %w", err)
	}
	return &Conn{uc: uc, raw: raw, oob: make([]byte, unix.CmsgSpace(MaxFDs*4)), timeout: DefaultMessageTimeout}, nil
}

// SetMessageTimeout bounds how long ReadMessage waits for the rest of a
// message once its first bytes arrived, and how long WriteMessage waits
// for the peer to make room; d <= 0 means DefaultMessageTimeout. Waiting
// for the first byte of a message is never bounded: a front end may stay
// silent between messages for as long as it likes (QEMU does, for the
// whole life of a VM), but it cannot hold a connection, and the device's
// only serve slot, by stopping in the middle of one.
func (c *Conn) SetMessageTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultMessageTimeout
	}
	c.timeout = d
}

// Close closes the socket.
func (c *Conn) Close() error { return c.uc.Close() }

// ReadMessage reads one message. Descriptors arrive with the header (the
// front end sends header, payload and descriptors in one sendmsg); they are
// received close-on-exec and returned in m.FDs, which the caller owns. On
// error, every descriptor received is closed. A malformed header is an
// error: the stream cannot be resynchronised, so the caller drops the
// connection.
func (c *Conn) ReadMessage() (m Message, err error) {
	var n, oobn, rflags int
	var rerr error
	err = c.raw.Read(func(fd uintptr) bool {
		n, oobn, rflags, _, rerr = unix.Recvmsg(int(fd), c.hdr[:], c.oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return m, fmt.Errorf("vhost: receive: %w", err)
	}
	fds, ferr := parseRights(c.oob[:oobn])
	m.FDs = fds
	defer func() {
		if err != nil {
			closeFDs(m.FDs)
			m.FDs = nil
		}
	}()
	if ferr != nil {
		return m, ferr
	}
	if rflags&unix.MSG_CTRUNC != 0 {
		return m, fmt.Errorf("%w: more than %d descriptors (ancillary data truncated)", ErrBadFDCount, MaxFDs)
	}
	if n == 0 {
		return m, io.EOF
	}
	// A message has begun: the rest of it must follow within the timeout.
	if err := c.uc.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return m, fmt.Errorf("vhost: set read deadline: %w", err)
	}
	defer c.uc.SetReadDeadline(time.Time{}) // idle between messages for as long as the peer likes
	if n < HeaderSize {
		if got, err := io.ReadFull(c.uc, c.hdr[n:]); err != nil {
			return m, c.partial(fmt.Sprintf("header: %d of %d bytes", n+got, HeaderSize), err)
		}
	}
	m.Header, err = DecodeHeader(c.hdr[:])
	if err != nil {
		return m, err
	}
	if m.Size > 0 {
		m.Payload = make([]byte, m.Size)
		if got, err := io.ReadFull(c.uc, m.Payload); err != nil {
			return m, c.partial(fmt.Sprintf("%v payload: %d of %d bytes", m.Request, got, m.Size), err)
		}
	}
	return m, nil
}

// partial describes a message cut short: the peer closed the connection
// or stopped sending for longer than the message timeout.
func (c *Conn) partial(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("vhost: partial message, %s, then nothing for %v: %w", what, c.timeout, err)
	}
	return fmt.Errorf("vhost: partial message, %s: %w", what, err)
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("vhost: ancillary data: %w", err)
	}
	var fds []int
	var bad error
	for _, cm := range cmsgs {
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			bad = fmt.Errorf("vhost: unexpected ancillary message (level %d type %d)", cm.Header.Level, cm.Header.Type)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, bad
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// WriteMessage sends one message with optional descriptors, all in a single
// sendmsg as QEMU does.
func (c *Conn) WriteMessage(h Header, payload []byte, fds []int) error {
	if len(payload) > MaxPayload {
		return ErrTooLarge
	}
	h.Size = uint32(len(payload))
	b := make([]byte, HeaderSize+len(payload))
	EncodeHeader(b, h)
	copy(b[HeaderSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	// A peer that stops reading must not hold the writer forever either.
	if err := c.uc.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return fmt.Errorf("vhost: set write deadline: %w", err)
	}
	defer c.uc.SetWriteDeadline(time.Time{})
	for len(b) > 0 {
		var n int
		var werr error
		err := c.raw.Write(func(fd uintptr) bool {
			n, werr = unix.SendmsgN(int(fd), b, oob, nil, unix.MSG_NOSIGNAL)
			return werr != unix.EAGAIN
		})
		if err == nil {
			err = werr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("vhost: send %v: the peer took nothing for %v: %w", h.Request, c.timeout, err)
		}
		if err != nil {
			return fmt.Errorf("vhost: send %v: %w", h.Request, err)
		}
		b, oob = b[n:], nil
	}
	return nil
}

// isClosed reports whether err means the peer went away.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}
