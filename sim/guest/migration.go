package guest

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
)

// DirtyLog is the dirty page bitmap a migrating front end shares with the
// back end, laid out as QEMU 7.2 makes it (hw/virtio/vhost.c): u64 chunks,
// bit p%64 of chunk p/64 for guest page p (4 KiB pages), in a sealed memfd
// sent with SET_LOG_BASE at offset 0.
type DirtyLog struct {
	fd  int
	buf []byte
}

// LogSizeFor is the log size in bytes QEMU gives a guest whose highest
// guest physical address is last: whole u64 chunks up to its page.
func LogSizeFor(last uint64) uint64 {
	chunk := uint64(vhost.LogPageSize * 64)
	return (last/chunk + 1) * 8
}

// NewDirtyLog makes a log of size bytes (a multiple of 8) in a memfd of
// fileSize bytes (at least size), sealed against resizing as QEMU seals
// its own.
func NewDirtyLog(size, fileSize uint64) (*DirtyLog, error) {
	fd, err := unix.MemfdCreate("zcnet-vhost-log", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("guest: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(fileSize)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		unix.Close(fd)
		return nil, err
	}
	buf, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &DirtyLog{fd: fd, buf: buf}, nil
}

// FD is the log's memfd.
func (l *DirtyLog) FD() int { return l.fd }

// Size is the log's size in bytes.
func (l *DirtyLog) Size() uint64 { return uint64(len(l.buf)) }

// Close unmaps the log and closes its memfd.
func (l *DirtyLog) Close() error {
	return errors.Join(unix.Munmap(l.buf), unix.Close(l.fd))
}

// Take returns the guest physical addresses of the pages marked dirty, in
// order, and clears them, as QEMU's log sync does (an atomic exchange of
// each chunk).
func (l *DirtyLog) Take() []uint64 {
	var pages []uint64
	for c := 0; c+8 <= len(l.buf); c += 8 {
		w := atomic.SwapUint64((*uint64)(unsafe.Pointer(&l.buf[c])), 0)
		for w != 0 {
			b := bits.TrailingZeros64(w)
			w &^= 1 << b
			pages = append(pages, (uint64(c/8)*64+uint64(b))*vhost.LogPageSize)
		}
	}
	sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
	return pages
}

// StartMigration does what QEMU 7.2 does when a migration starts
// (vhost_migration_log): a log sized for the memory table goes to the back
// end with SET_LOG_BASE (which answers), then SET_FEATURES adds LOG_ALL and
// every ring gets SET_VRING_ADDR with VHOST_VRING_F_LOG and its used ring's
// guest physical address. It needs LOG_SHMFD negotiated.
func (g *Guest) StartMigration() (*DirtyLog, error) {
	l, err := NewDirtyLog(LogSizeFor(g.Mem.End()-1), LogSizeFor(g.Mem.End()-1))
	if err != nil {
		return nil, err
	}
	if err := g.SetLogBase(l, l.Size(), 0); err != nil {
		l.Close()
		return nil, err
	}
	if err := g.SetLogging(true); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// SetLogBase sends SET_LOG_BASE for size bytes of l at offset off.
func (g *Guest) SetLogBase(l *DirtyLog, size, off uint64) error {
	if g.Protocol&vhost.ProtoFLogShmfd == 0 {
		return errors.New("guest: the back end did not offer LOG_SHMFD")
	}
	return g.SendLogBase(l.FD(), size, off)
}

// SendLogBase sends SET_LOG_BASE with descriptor fd as QEMU 7.2 does
// (vhost_user_set_log_base): without NEED_REPLY, then waiting for the
// back end's reply, which must be a SET_LOG_BASE reply (its payload, if
// any, is ignored). A back end that refuses the log closes the connection.
func (g *Guest) SendLogBase(fd int, size, off uint64) error {
	c := g.FE.Conn()
	g.FE.Log = append(g.FE.Log, vhost.ReqSetLogBase)
	if err := c.WriteMessage(vhost.Header{Request: vhost.ReqSetLogBase, Flags: vhost.FlagVersion}, vhost.EncodeLog(size, off), []int{fd}); err != nil {
		return err
	}
	m, err := c.ReadMessage()
	if err != nil {
		return fmt.Errorf("guest: reply to SET_LOG_BASE: %w", err)
	}
	closeAll(m.FDs)
	if m.Request != vhost.ReqSetLogBase || m.Flags != vhost.FlagVersion|vhost.FlagReply {
		return fmt.Errorf("guest: SET_LOG_BASE answered with %v flags %#x", m.Request, m.Flags)
	}
	return nil
}

// SetLogging turns logging on or off as QEMU's vhost_dev_set_log does:
// SET_FEATURES with or without LOG_ALL, then SET_VRING_ADDR of every ring
// with or without VHOST_VRING_F_LOG.
func (g *Guest) SetLogging(on bool) error {
	f := g.Features &^ vhost.FLogAll
	var flags uint32
	if on {
		f |= vhost.FLogAll
		flags = vhost.VringFLog
	}
	if _, err := g.FE.Request(vhost.ReqSetFeatures, vhost.EncodeU64(f)); err != nil {
		return err
	}
	g.Features = f
	for i, q := range g.queues {
		desc, avail, used := q.ring.Addrs()
		a := vhost.VringAddr{Index: uint32(i), Flags: flags, Desc: desc, Avail: avail, Used: used, Log: q.ring.UsedGPA}
		if _, err := g.FE.Request(vhost.ReqSetVringAddr, vhost.EncodeVringAddr(a)); err != nil {
			return err
		}
	}
	return nil
}

// RxBufferGPA is the guest physical address of the receive buffer the
// device used with head on pair's RX queue (before Receive frees it), for
// tests that check what the device wrote where.
func (g *Guest) RxBufferGPA(pair int, head uint16) (uint64, bool) {
	q := g.queues[2*pair]
	s, ok := q.slotOf.get(head)
	return q.slotGPA(s), ok
}
