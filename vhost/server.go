package vhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/internal/memfault"
)

// ErrBusy is returned when a second front end tries to use a device that
// already has one.
var ErrBusy = errors.New("vhost: device already has a front end connected")

// ServeOption tunes how Serve, ServeListener and DialAndServe hold a
// front end to the protocol.
type ServeOption func(*serveConfig)

type serveConfig struct {
	messageTimeout time.Duration
}

// WithMessageTimeout bounds how long a front end may take to finish a
// message it has begun (and to take a reply): past it the connection is
// dropped, the device freed for the next front end. 0 means
// DefaultMessageTimeout. A front end silent between whole messages is
// never dropped.
func WithMessageTimeout(d time.Duration) ServeOption {
	return func(c *serveConfig) { c.messageTimeout = d }
}

// Serve runs the vhost-user protocol for d over one connection until the
// front end disconnects, a malformed or partial message arrives, or ctx
// ends. When it returns, every ring is stopped and the guest memory is
// released: the next connection starts from scratch, as QEMU's reconnect
// replays everything. A clean disconnect returns nil.
func (d *Device) Serve(ctx context.Context, uc *net.UnixConn, opts ...ServeOption) error {
	var cfg serveConfig
	for _, o := range opts {
		o(&cfg)
	}
	if !d.busy.CompareAndSwap(false, true) {
		uc.Close()
		return ErrBusy
	}
	defer d.busy.Store(false)
	c, err := NewConn(uc)
	if err != nil {
		uc.Close()
		return err
	}
	c.SetMessageTimeout(cfg.messageTimeout)
	// Requests touch guest memory (and the ring hook drains the NIC into
	// it): a fault there must end this session, not the process.
	defer memfault.Restore(memfault.Enable())
	defer d.endSession()
	defer c.Close()
	d.serving(c)
	defer d.serving(nil)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	d.log.Info("front end connected")
	for {
		m, err := c.ReadMessage()
		if err != nil {
			if dropped := d.serving(c); dropped != nil {
				d.log.Warn("dropped the front end: its guest memory faulted on the data path", zap.Error(dropped))
				return fmt.Errorf("vhost: device %q: front end dropped: %w", d.cfg.Name, dropped)
			}
			if isClosed(err) || ctx.Err() != nil {
				d.log.Info("front end disconnected")
				return nil
			}
			d.log.Warn("dropping front end after a malformed or partial message", zap.Error(err))
			return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, err)
		}
		reply, fds, respond, fatal := d.DispatchFDs(&m)
		if respond {
			err := c.WriteMessage(Header{Request: m.Request, Flags: FlagVersion | FlagReply}, reply, fds)
			closeFDs(fds) // the peer has its own copies once sent
			if err != nil {
				if isClosed(err) {
					return nil
				}
				return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, err)
			}
		}
		if fatal != nil {
			d.log.Warn("dropping front end", zap.Error(fatal))
			return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, fatal)
		}
	}
}

// Listen creates the unix socket a front end in client mode (QEMU's
// default) connects to, with mode 0600, replacing a stale socket file left
// by an earlier run. ListenWith gives it another mode or group.
func Listen(path string) (*net.UnixListener, error) {
	return ListenWith(path, SocketOptions{})
}

// ListenWith is Listen with the socket's mode and group given by o.
func ListenWith(path string, o SocketOptions) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("vhost: %s: %w", path, ErrSocketInUse)
		}
		_ = os.Remove(path)
	}
	l, err := ListenSocket(path, o)
	if err != nil {
		return nil, fmt.Errorf("vhost: %w", err)
	}
	return l, nil
}

// ErrSocketInUse: a process is listening on the socket path already.
var ErrSocketInUse = errors.New("in use by another process")

// DefaultSocketMode lets only the owner (the user zcnet runs as) connect.
const DefaultSocketMode os.FileMode = 0o600

// SocketOptions say who may connect to a unix socket zcnet listens on.
// Whoever can connect to a vhost-user socket is the VM's front end: it
// reads the guest's traffic and sends onto the wire.
type SocketOptions struct {
	// Mode is the socket file's permission bits; 0 means
	// DefaultSocketMode. connect(2) needs write permission: 0660 with a
	// Group lets a front end running as another user in that group (QEMU
	// under libvirt, group kvm) connect.
	Mode os.FileMode
	// Group is the group (name or numeric id) the socket file is given;
	// "" leaves the group zcnet creates it with.
	Group string
}

// ParseSocketMode parses an octal permission mode such as 0660 for
// SocketOptions.Mode.
func ParseSocketMode(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("socket mode %q: give octal permission bits such as 0600 or 0660", s)
	}
	m := os.FileMode(v)
	if err := checkSocketMode(m); err != nil {
		return 0, err
	}
	return m, nil
}

func checkSocketMode(m os.FileMode) error {
	switch {
	case m&^os.ModePerm != 0:
		return fmt.Errorf("socket mode %#o: only permission bits (0 to 0777) apply to a socket", uint32(m))
	case m&0o222 == 0:
		return fmt.Errorf("socket mode %04o: no one could connect (connecting needs write permission); give e.g. 0600 or 0660", uint32(m))
	}
	return nil
}

// resolve checks o and returns the mode to set and the group id (-1: keep).
func (o SocketOptions) resolve() (os.FileMode, int, error) {
	mode := o.Mode
	if mode == 0 {
		mode = DefaultSocketMode
	}
	if err := checkSocketMode(mode); err != nil {
		return 0, -1, err
	}
	if o.Group == "" {
		return mode, -1, nil
	}
	if gid, err := strconv.ParseUint(o.Group, 10, 31); err == nil {
		return mode, int(gid), nil
	}
	g, err := user.LookupGroup(o.Group)
	if err != nil {
		return 0, -1, fmt.Errorf("socket group %q: %w", o.Group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, -1, fmt.Errorf("socket group %q: id %q: %w", o.Group, g.Gid, err)
	}
	return mode, gid, nil
}

// ListenSocket creates a listening unix stream socket at path whose file
// has exactly the mode (and group) o asks for, whatever the umask, and is
// at no moment open to anyone more. It does not replace an existing file.
// Closing the listener removes the file.
//
// Linux's bind(2) creates the file with the mode of the socket's own inode
// less the umask, so the mode is set on the socket (fchmod) before bind:
// the file appears with at most the bits asked for, never more, and is
// listening straight away as with net.ListenUnix. The umask can only have
// taken bits away; a chmod after listen puts them back. With a group, the
// group bits stay off until the chown has given the file that group.
// Alternatives: setting the umask around bind changes it for the whole
// process (files other goroutines create meanwhile); a chmod between bind
// and listen leaves a moment where the file exists but refuses
// connections (a front end that waits for the file, then connects once,
// fails); binding in a private directory and renaming into place leaves
// the listener knowing the socket by the temporary name, so it could not
// remove it on close.
func ListenSocket(path string, o SocketOptions) (*net.UnixListener, error) {
	mode, gid, err := o.resolve()
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: socket: %w", path, err)
	}
	fail := func(what string, err error, bound bool) (*net.UnixListener, error) {
		unix.Close(fd)
		if bound {
			_ = os.Remove(path)
		}
		return nil, fmt.Errorf("listen on %s: %s: %w", path, what, err)
	}
	first := mode
	if gid >= 0 {
		first &^= 0o070 // no access for zcnet's own group on the way
	}
	if err := unix.Fchmod(fd, uint32(first)); err != nil {
		return fail("set the socket's mode", err, false)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fail("bind", err, false)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		return fail("listen", err, true)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			return fail(fmt.Sprintf("give the socket group %q", o.Group), err, true)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fail("stat", err, true)
	}
	if os.FileMode(st.Mode)&os.ModePerm != mode {
		if err := os.Chmod(path, mode); err != nil {
			return fail(fmt.Sprintf("set mode %04o", uint32(mode)), err, true)
		}
	}
	f := os.NewFile(uintptr(fd), path)
	ln, err := net.FileListener(f) // a duplicate of fd
	f.Close()
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// ServeListener is server mode: it accepts front ends on l one at a time
// and serves each until it goes away, until ctx ends. It closes l.
func ServeListener(ctx context.Context, l *net.UnixListener, d *Device, opts ...ServeOption) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vhost: device %q: accept: %w", d.cfg.Name, err)
		}
		if err := d.Serve(ctx, uc, opts...); err != nil {
			d.log.Warn("session ended with an error; waiting for the front end to reconnect", zap.Error(err))
		}
	}
}

// Backoff bounds the delay between connection attempts in client mode.
type Backoff struct {
	Min, Max time.Duration
}

// DefaultBackoff retries after 10 ms, doubling up to 1 s.
var DefaultBackoff = Backoff{Min: 10 * time.Millisecond, Max: time.Second}

// DialAndServe is client mode: it connects to a front end listening on path
// (QEMU server=on, virtio-user server=1), serves it, and after every
// disconnect or failed attempt reconnects with exponential backoff, until
// ctx ends.
func DialAndServe(ctx context.Context, path string, d *Device, b Backoff, opts ...ServeOption) error {
	if b.Min <= 0 {
		b = DefaultBackoff
	}
	delay := b.Min
	var dialer net.Dialer
	for ctx.Err() == nil {
		c, err := dialer.DialContext(ctx, "unix", path)
		if err == nil {
			delay = b.Min
			if err := d.Serve(ctx, c.(*net.UnixConn), opts...); err != nil {
				d.log.Warn("session ended with an error; reconnecting", zap.Error(err))
			}
			continue
		}
		d.log.Debug("front end not reachable; retrying", zap.String("path", path), zap.Duration("in", delay), zap.Error(err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		delay = min(2*delay, b.Max)
	}
	return nil
}
