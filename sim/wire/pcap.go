package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// The classic libpcap file format: a 24-byte file header, then per packet a
// 16-byte record header and the captured bytes. The magic number tells the
// byte order the writer used and whether the sub-second field holds
// microseconds or nanoseconds.
const (
	pcapMagicMicro = 0xa1b2c3d4
	pcapMagicNano  = 0xa1b23c4d
	pcapngMagic    = 0x0a0d0d0a // a pcapng section header block

	pcapFileHeaderLen   = 24
	pcapRecordHeaderLen = 16

	// LinkTypeEthernet is LINKTYPE_ETHERNET: frames from the destination
	// address on, without preamble or FCS.
	LinkTypeEthernet = 1

	// DefaultSnapLen is tcpdump's default capture length.
	DefaultSnapLen = 262144
	// maxRecordLen bounds one record's captured length when reading, so
	// that a corrupt file fails instead of allocating gigabytes.
	maxRecordLen = 16 << 20
)

// PcapOptions tunes a PcapWriter.
type PcapOptions struct {
	// Microseconds writes microsecond timestamps (magic a1b2c3d4) instead
	// of the default nanoseconds (a1b23c4d), for old readers.
	Microseconds bool
	// SnapLen cuts frames longer than this; default DefaultSnapLen.
	SnapLen int
	// Now stamps each frame; default time.Now.
	Now func() time.Time
}

// PcapWriter is an Endpoint that records every frame it is handed to a
// classic pcap file (LINKTYPE_ETHERNET), readable by tcpdump, tshark and
// Wireshark. Write errors cannot be returned from Deliver; the first one is
// kept, later frames are dropped, and Err, Flush and Close report it. Safe
// for concurrent use.
type PcapWriter struct {
	mu      sync.Mutex
	w       *bufio.Writer
	closer  io.Closer
	nano    bool
	snapLen int
	now     func() time.Time
	rec     [pcapRecordHeaderLen]byte
	frames  uint64
	err     error
}

// NewPcapWriter writes the pcap file header to w and returns a writer for
// the frames. Call Flush or Close to push buffered records out.
func NewPcapWriter(w io.Writer, opt PcapOptions) (*PcapWriter, error) {
	if opt.SnapLen == 0 {
		opt.SnapLen = DefaultSnapLen
	}
	if opt.SnapLen < 0 {
		return nil, fmt.Errorf("wire: pcap snap length %d is negative", opt.SnapLen)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	p := &PcapWriter{w: bufio.NewWriterSize(w, 64<<10), nano: !opt.Microseconds, snapLen: opt.SnapLen, now: opt.Now}
	var h [pcapFileHeaderLen]byte
	magic := uint32(pcapMagicNano)
	if opt.Microseconds {
		magic = pcapMagicMicro
	}
	le := binary.LittleEndian
	le.PutUint32(h[0:], magic)
	le.PutUint16(h[4:], 2) // version 2.4, the only one in use
	le.PutUint16(h[6:], 4)
	// h[8:16]: thiszone and sigfigs, always 0.
	le.PutUint32(h[16:], uint32(opt.SnapLen))
	le.PutUint32(h[20:], LinkTypeEthernet)
	if _, err := p.w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("wire: writing pcap file header: %w", err)
	}
	return p, nil
}

// CreatePcap creates (or truncates) the file at path and returns a writer
// for it; Close flushes and closes the file.
func CreatePcap(path string, opt PcapOptions) (*PcapWriter, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("wire: creating pcap file: %w", err)
	}
	p, err := NewPcapWriter(f, opt)
	if err != nil {
		f.Close()
		return nil, err
	}
	p.closer = f
	return p, nil
}

// Deliver implements Endpoint: it appends one record.
func (p *PcapWriter) Deliver(frame []byte) {
	t := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return
	}
	capLen := min(len(frame), p.snapLen)
	sub := uint32(t.Nanosecond())
	if !p.nano {
		sub /= 1000
	}
	le := binary.LittleEndian
	le.PutUint32(p.rec[0:], uint32(t.Unix()))
	le.PutUint32(p.rec[4:], sub)
	le.PutUint32(p.rec[8:], uint32(capLen))
	le.PutUint32(p.rec[12:], uint32(len(frame)))
	if _, err := p.w.Write(p.rec[:]); err != nil {
		p.err = fmt.Errorf("wire: writing pcap record: %w", err)
		return
	}
	if _, err := p.w.Write(frame[:capLen]); err != nil {
		p.err = fmt.Errorf("wire: writing pcap record: %w", err)
		return
	}
	p.frames++
}

// Frames is the number of records written.
func (p *PcapWriter) Frames() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frames
}

// Err returns the first write error, if any.
func (p *PcapWriter) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Flush writes buffered records to the underlying writer.
func (p *PcapWriter) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.flushLocked()
}

func (p *PcapWriter) flushLocked() error {
	if p.err != nil {
		return p.err
	}
	if err := p.w.Flush(); err != nil {
		p.err = fmt.Errorf("wire: flushing pcap records: %w", err)
	}
	return p.err
}

// Close flushes, closes the file if CreatePcap opened it, and makes later
// Deliver calls drop their frames.
func (p *PcapWriter) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.flushLocked()
	if p.closer != nil {
		if cerr := p.closer.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("wire: closing pcap file: %w", cerr)
		}
		p.closer = nil
	}
	if p.err == nil {
		p.err = errors.New("wire: pcap writer is closed")
	}
	return err
}

// PcapRecord is one packet read from a pcap file. Data is valid until the
// next call to Next.
type PcapRecord struct {
	Time time.Time
	Data []byte
	// OrigLen is the frame's length on the wire; larger than len(Data)
	// when the capture cut the frame short.
	OrigLen int
}

// PcapReader reads a classic pcap file of either byte order and either
// timestamp resolution.
type PcapReader struct {
	r        *bufio.Reader
	order    binary.ByteOrder
	nano     bool
	snapLen  uint32
	linkType uint32
	hdr      [pcapRecordHeaderLen]byte
	buf      []byte
}

// NewPcapReader reads and checks the file header. Only classic pcap is
// understood; a pcapng file is refused with advice on converting it.
func NewPcapReader(r io.Reader) (*PcapReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var h [pcapFileHeaderLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, fmt.Errorf("wire: reading pcap file header: %w", err)
	}
	p := &PcapReader{r: br}
	switch binary.LittleEndian.Uint32(h[0:]) {
	case pcapMagicMicro:
		p.order = binary.LittleEndian
	case pcapMagicNano:
		p.order, p.nano = binary.LittleEndian, true
	default:
		switch binary.BigEndian.Uint32(h[0:]) {
		case pcapMagicMicro:
			p.order = binary.BigEndian
		case pcapMagicNano:
			p.order, p.nano = binary.BigEndian, true
		case pcapngMagic:
			return nil, errors.New("wire: this is a pcapng file; only classic pcap is read: convert it with `editcap -F pcap in.pcapng out.pcap`")
		default:
			return nil, fmt.Errorf("wire: not a pcap file (magic %#08x)", binary.BigEndian.Uint32(h[0:]))
		}
	}
	if major := p.order.Uint16(h[4:]); major != 2 {
		return nil, fmt.Errorf("wire: pcap version %d.%d is not 2.x", major, p.order.Uint16(h[6:]))
	}
	p.snapLen = p.order.Uint32(h[16:])
	// The upper bits of the link type field may carry FCS information; the
	// link type proper is the low 16 bits.
	p.linkType = p.order.Uint32(h[20:]) & 0xffff
	if p.linkType != LinkTypeEthernet {
		return nil, fmt.Errorf("wire: pcap link type %d is not Ethernet (1); capture on an Ethernet interface", p.linkType)
	}
	return p, nil
}

// Nanosecond reports whether the file's timestamps have nanosecond
// resolution.
func (p *PcapReader) Nanosecond() bool { return p.nano }

// SnapLen is the capture length the file header declares.
func (p *PcapReader) SnapLen() int { return int(p.snapLen) }

// Next returns the next record, or io.EOF after the last one.
func (p *PcapReader) Next() (PcapRecord, error) {
	if _, err := io.ReadFull(p.r, p.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return PcapRecord{}, fmt.Errorf("wire: pcap record header cut short: %w", err)
		}
		return PcapRecord{}, err // io.EOF: a clean end
	}
	sec := p.order.Uint32(p.hdr[0:])
	sub := p.order.Uint32(p.hdr[4:])
	capLen := p.order.Uint32(p.hdr[8:])
	origLen := p.order.Uint32(p.hdr[12:])
	if capLen > maxRecordLen {
		return PcapRecord{}, fmt.Errorf("wire: pcap record of %d bytes is implausible; the file is corrupt", capLen)
	}
	if int(capLen) > cap(p.buf) {
		p.buf = make([]byte, capLen)
	}
	p.buf = p.buf[:capLen]
	if _, err := io.ReadFull(p.r, p.buf); err != nil {
		return PcapRecord{}, fmt.Errorf("wire: pcap record data cut short: %w", err)
	}
	nsec := int64(sub)
	if !p.nano {
		nsec *= 1000
	}
	return PcapRecord{Time: time.Unix(int64(sec), nsec), Data: p.buf, OrigLen: int(max(origLen, capLen))}, nil
}

// ReplayOptions tunes Replay.
type ReplayOptions struct {
	// Paced reproduces the gaps between the recorded timestamps, divided
	// by Speed (default 1); otherwise frames are delivered back to back.
	Paced bool
	Speed float64
}

// ReplayStats counts what Replay did.
type ReplayStats struct {
	Delivered uint64
	// Truncated counts records cut short by the capture's snap length;
	// they are skipped, since a partial frame is not a frame.
	Truncated uint64
}

// Replay delivers every frame of a pcap stream to dst, until the end of
// the file, an error, or ctx is done.
func Replay(ctx context.Context, r *PcapReader, dst Endpoint, opt ReplayOptions) (ReplayStats, error) {
	var st ReplayStats
	speed := opt.Speed
	if speed <= 0 {
		speed = 1
	}
	var first time.Time
	start := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		rec, err := r.Next()
		if err == io.EOF {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		if len(rec.Data) < rec.OrigLen {
			st.Truncated++
			continue
		}
		if opt.Paced {
			if first.IsZero() {
				first = rec.Time
			}
			due := start.Add(time.Duration(float64(rec.Time.Sub(first)) / speed))
			if wait := time.Until(due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return st, ctx.Err()
				case <-t.C:
				}
			}
		}
		dst.Deliver(rec.Data)
		st.Delivered++
	}
}

// ReplayFile opens a pcap file and replays it into dst.
func ReplayFile(ctx context.Context, path string, dst Endpoint, opt ReplayOptions) (ReplayStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return ReplayStats{}, fmt.Errorf("wire: opening pcap file: %w", err)
	}
	defer f.Close()
	r, err := NewPcapReader(f)
	if err != nil {
		return ReplayStats{}, fmt.Errorf("%s: %w", path, err)
	}
	st, err := Replay(ctx, r, dst, opt)
	if err != nil {
		return st, fmt.Errorf("replaying %s: %w", path, err)
	}
	return st, nil
}
