package vhost

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

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
}

// NewConn wraps a connected unix stream socket.
func NewConn(uc *net.UnixConn) (*Conn, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("vhost-user: raw access to socket: %w", err)
	}
	return &Conn{uc: uc, raw: raw, oob: make([]byte, unix.CmsgSpace(MaxFDs*4))}, nil
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
		return m, fmt.Errorf("vhost-user: receive: %w", err)
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
	if n < HeaderSize {
		if _, err := io.ReadFull(c.uc, c.hdr[n:]); err != nil {
			return m, fmt.Errorf("vhost-user: short header: %w", err)
		}
	}
	m.Header, err = DecodeHeader(c.hdr[:])
	if err != nil {
		return m, err
	}
	if m.Size > 0 {
		m.Payload = make([]byte, m.Size)
		if _, err := io.ReadFull(c.uc, m.Payload); err != nil {
			return m, fmt.Errorf("vhost-user: %v payload: %w", m.Request, err)
		}
	}
	return m, nil
}

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("vhost-user: ancillary data: %w", err)
	}
	var fds []int
	var bad error
	for _, cm := range cmsgs {
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			bad = fmt.Errorf("vhost-user: unexpected ancillary message (level %d type %d)", cm.Header.Level, cm.Header.Type)
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
		if err != nil {
			return fmt.Errorf("vhost-user: send %v: %w", h.Request, err)
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
