package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// specRecord and decodeSpec are an independent pcap reader for checking
// the writer, written from the file format description (libpcap's
// pcap-savefile(5), draft-ietf-opsawg-pcap): a 24-byte header of magic,
// major, minor, thiszone, sigfigs, snaplen, network; then records of
// ts_sec, ts_subsec, incl_len, orig_len and incl_len bytes of data. It
// shares no code with PcapReader and only accepts little-endian files,
// which is what the writer produces.
type specRecord struct {
	sec, subsec, inclLen, origLen uint32
	data                          []byte
}

type specFile struct {
	magic           uint32
	major, minor    uint16
	thiszone        int32
	sigfigs         uint32
	snaplen, llType uint32
	records         []specRecord
}

func decodeSpec(t *testing.T, b []byte) specFile {
	t.Helper()
	if len(b) < 24 {
		t.Fatalf("pcap file is %d bytes, shorter than its header", len(b))
	}
	u32 := func(o int) uint32 { return uint32(b[o]) | uint32(b[o+1])<<8 | uint32(b[o+2])<<16 | uint32(b[o+3])<<24 }
	u16 := func(o int) uint16 { return uint16(b[o]) | uint16(b[o+1])<<8 }
	f := specFile{
		magic: u32(0), major: u16(4), minor: u16(6), thiszone: int32(u32(8)),
		sigfigs: u32(12), snaplen: u32(16), llType: u32(20),
	}
	for o := 24; o < len(b); {
		if len(b)-o < 16 {
			t.Fatalf("record header at %d cut short", o)
		}
		r := specRecord{sec: u32(o), subsec: u32(o + 4), inclLen: u32(o + 8), origLen: u32(o + 12)}
		o += 16
		if int(r.inclLen) > len(b)-o {
			t.Fatalf("record data at %d cut short: incl_len %d, %d bytes left", o, r.inclLen, len(b)-o)
		}
		r.data = b[o : o+int(r.inclLen)]
		o += int(r.inclLen)
		f.records = append(f.records, r)
	}
	return f
}

// stampClock returns stamps 1.5 ms apart starting at a time whose
// nanoseconds are all non-zero, so that truncation to microseconds shows.
func stampClock() (func() time.Time, func(i int) time.Time) {
	base := time.Unix(1700000000, 123456789)
	at := func(i int) time.Time { return base.Add(time.Duration(i) * 1500 * time.Microsecond) }
	i := 0
	return func() time.Time { t := at(i); i++; return t }, at
}

// writeTestPcap writes n generator frames of mixed sizes and returns the
// frames, their stamps and the file contents.
func writeTestPcap(t *testing.T, n int, opt PcapOptions) ([][]byte, func(int) time.Time, []byte) {
	t.Helper()
	var buf bytes.Buffer
	now, at := stampClock()
	opt.Now = now
	w, err := NewPcapWriter(&buf, opt)
	if err != nil {
		t.Fatal(err)
	}
	var c capture
	g1 := newGenerator(t, GeneratorConfig{Flows: 4}, Tee{w, &c})
	g2 := newGenerator(t, GeneratorConfig{Flows: 3, FrameSize: 1518, Vary: VarySrcIP}, Tee{w, &c})
	for i := range n {
		if i%2 == 0 {
			g1.Emit(1)
		} else {
			g2.Emit(1)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if w.Frames() != uint64(n) {
		t.Errorf("writer counted %d frames, want %d", w.Frames(), n)
	}
	return c.all(), at, buf.Bytes()
}

func TestPcapWriterFormat(t *testing.T) {
	for _, micro := range []bool{false, true} {
		t.Run(fmt.Sprintf("micro=%v", micro), func(t *testing.T) {
			frames, at, file := writeTestPcap(t, 6, PcapOptions{Microseconds: micro})
			f := decodeSpec(t, file)
			wantMagic := uint32(0xa1b23c4d)
			if micro {
				wantMagic = 0xa1b2c3d4
			}
			if f.magic != wantMagic || f.major != 2 || f.minor != 4 || f.thiszone != 0 || f.sigfigs != 0 ||
				f.snaplen != DefaultSnapLen || f.llType != 1 {
				t.Errorf("file header %+v", f)
			}
			if len(f.records) != len(frames) {
				t.Fatalf("%d records, want %d", len(f.records), len(frames))
			}
			for i, r := range f.records {
				ts := at(i)
				wantSub := uint32(ts.Nanosecond())
				if micro {
					wantSub /= 1000
				}
				if r.sec != uint32(ts.Unix()) || r.subsec != wantSub {
					t.Errorf("record %d stamp %d.%d, want %d.%d", i, r.sec, r.subsec, ts.Unix(), wantSub)
				}
				if int(r.inclLen) != len(frames[i]) || int(r.origLen) != len(frames[i]) || !bytes.Equal(r.data, frames[i]) {
					t.Errorf("record %d: incl %d orig %d, data differs: %v", i, r.inclLen, r.origLen, !bytes.Equal(r.data, frames[i]))
				}
			}
		})
	}
}

func TestPcapRoundTrip(t *testing.T) {
	for _, micro := range []bool{false, true} {
		frames, at, file := writeTestPcap(t, 9, PcapOptions{Microseconds: micro})
		r, err := NewPcapReader(bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		if r.Nanosecond() == micro || r.SnapLen() != DefaultSnapLen {
			t.Errorf("reader: nanosecond %v snaplen %d", r.Nanosecond(), r.SnapLen())
		}
		for i := range frames {
			rec, err := r.Next()
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			want := at(i)
			if micro {
				want = want.Truncate(time.Microsecond)
			}
			if !rec.Time.Equal(want) || !bytes.Equal(rec.Data, frames[i]) || rec.OrigLen != len(frames[i]) {
				t.Errorf("record %d: time %v (want %v), %d bytes, orig %d", i, rec.Time, want, len(rec.Data), rec.OrigLen)
			}
		}
		if _, err := r.Next(); err != io.EOF {
			t.Errorf("after the last record: %v, want io.EOF", err)
		}

		// Replayed into a sink, the generators' frames verify.
		sink := NewSink(nil)
		r, _ = NewPcapReader(bytes.NewReader(file))
		st, err := Replay(context.Background(), r, sink, ReplayOptions{})
		if err != nil || st.Delivered != uint64(len(frames)) || st.Truncated != 0 {
			t.Fatalf("replay: %+v, %v", st, err)
		}
		// Two generators share one sink here, so only checksums and counts
		// are meaningful, not sequence accounting.
		if s := sink.Stats(); s.Received != uint64(len(frames)) || s.BadUDPChecksum+s.BadIPChecksum+s.Malformed != 0 {
			t.Errorf("replayed frames at the sink: %+v", s)
		}
	}
}

func TestPcapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cap.pcap")
	w, err := CreatePcap(path, PcapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := newGenerator(t, GeneratorConfig{}, w)
	g.Emit(100)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	g.Emit(1) // dropped: the writer is closed
	if w.Err() == nil || w.Frames() != 100 {
		t.Errorf("after Close: err %v, %d frames", w.Err(), w.Frames())
	}
	sink := NewSink(nil)
	st, err := ReplayFile(context.Background(), path, sink, ReplayOptions{})
	if err != nil || st.Delivered != 100 {
		t.Fatalf("replay: %+v, %v", st, err)
	}
	if s := sink.Stats(); s.Received != 100 || s.Lost != 0 || s.NextSeq != 100 {
		t.Errorf("sink after replay: %+v", s)
	}
	if _, err := ReplayFile(context.Background(), filepath.Join(t.TempDir(), "missing.pcap"), sink, ReplayOptions{}); err == nil {
		t.Error("replaying a missing file succeeded")
	}
}

func TestPcapSnapLen(t *testing.T) {
	frames, _, file := writeTestPcap(t, 4, PcapOptions{SnapLen: 40})
	f := decodeSpec(t, file)
	if f.snaplen != 40 {
		t.Errorf("snaplen %d, want 40", f.snaplen)
	}
	for i, r := range f.records {
		if r.inclLen != 40 || int(r.origLen) != len(frames[i]) || !bytes.Equal(r.data, frames[i][:40]) {
			t.Errorf("record %d: incl %d orig %d", i, r.inclLen, r.origLen)
		}
	}
	r, err := NewPcapReader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var c capture
	st, err := Replay(context.Background(), r, &c, ReplayOptions{})
	if err != nil || st.Delivered != 0 || st.Truncated != 4 || len(c.all()) != 0 {
		t.Errorf("replay of cut frames: %+v, %v, %d delivered", st, err, len(c.all()))
	}
}

// bigEndianPcap builds, by hand, a big-endian microsecond pcap file as a
// big-endian machine's libpcap would write it.
func bigEndianPcap(records ...[]byte) []byte {
	be := binary.BigEndian
	b := be.AppendUint32(nil, 0xa1b2c3d4)
	b = be.AppendUint16(b, 2)
	b = be.AppendUint16(b, 4)
	b = be.AppendUint32(b, 0)
	b = be.AppendUint32(b, 0)
	b = be.AppendUint32(b, 65535)
	b = be.AppendUint32(b, 1)
	for i, r := range records {
		b = be.AppendUint32(b, 1000+uint32(i))
		b = be.AppendUint32(b, 999999)
		b = be.AppendUint32(b, uint32(len(r)))
		b = be.AppendUint32(b, uint32(len(r)))
		b = append(b, r...)
	}
	return b
}

func TestPcapReaderBigEndian(t *testing.T) {
	p := probes(t, 2)
	r, err := NewPcapReader(bytes.NewReader(bigEndianPcap(p...)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range p {
		rec, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if want := time.Unix(1000+int64(i), 999999000); !rec.Time.Equal(want) || !bytes.Equal(rec.Data, p[i]) {
			t.Errorf("record %d: time %v want %v, data equal %v", i, rec.Time, want, bytes.Equal(rec.Data, p[i]))
		}
	}
}

func TestPcapReaderRejects(t *testing.T) {
	good := bigEndianPcap(probes(t, 1)...)
	pcapng := append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, good[4:]...)
	rawIP := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(rawIP[20:], 101) // LINKTYPE_RAW
	v1 := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(v1[4:], 1)
	for _, c := range []struct {
		name, want string
		file       []byte
	}{
		{"pcapng", "pcapng", pcapng},
		{"link type", "link type 101", rawIP},
		{"version", "version 1", v1},
		{"garbage", "not a pcap file", bytes.Repeat([]byte{0x42}, 40)},
		{"empty", "file header", nil},
	} {
		if _, err := NewPcapReader(bytes.NewReader(c.file)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}

	// A record cut short is an error, not a clean end.
	for _, cut := range []int{5, 20} {
		r, err := NewPcapReader(bytes.NewReader(good[:len(good)-cut]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Next(); err == nil || err == io.EOF {
			t.Errorf("record missing its last %d bytes: %v", cut, err)
		}
	}
	huge := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(huge[24+8:], 1<<30)
	r, _ := NewPcapReader(bytes.NewReader(huge))
	if _, err := r.Next(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("1 GiB record: %v", err)
	}
}

func TestPcapPacedReplay(t *testing.T) {
	var buf bytes.Buffer
	base := time.Unix(1700000000, 0)
	i := 0
	w, err := NewPcapWriter(&buf, PcapOptions{Now: func() time.Time {
		i++
		return base.Add(time.Duration(i) * 40 * time.Millisecond)
	}})
	if err != nil {
		t.Fatal(err)
	}
	newGenerator(t, GeneratorConfig{}, w).Emit(3) // 80 ms from first to last
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r, _ := NewPcapReader(bytes.NewReader(buf.Bytes()))
	start := time.Now()
	st, err := Replay(context.Background(), r, NewSink(nil), ReplayOptions{Paced: true, Speed: 2})
	if elapsed := time.Since(start); err != nil || st.Delivered != 3 || elapsed < 40*time.Millisecond {
		t.Errorf("paced replay at speed 2 of 80 ms: %+v, %v, took %v (at least 40 ms)", st, err, elapsed)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r, _ = NewPcapReader(bytes.NewReader(buf.Bytes()))
	if _, err := Replay(ctx, r, NewSink(nil), ReplayOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("replay with a cancelled context: %v", err)
	}
}

// requireTool finds a program the cross-checks need, and fails the test
// when it is missing: a cross-check that quietly does not run passes
// without checking anything. Both tools come with Debian's tshark package,
// which CI (.ci/run) installs.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found, and the pcap cross-check needs it: install Debian's %s package (apt-get install %s)", name, pkg, pkg)
	}
	return path
}

// TestPcapTshark has Wireshark's own dissectors read what the writer wrote:
// frame count, lengths, timestamps, addresses, and IPv4 and UDP checksums
// validated by tshark.
func TestPcapTshark(t *testing.T) {
	tshark := requireTool(t, "tshark", "tshark")
	frames, at, file := writeTestPcap(t, 8, PcapOptions{})
	path := filepath.Join(t.TempDir(), "gen.pcap")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tshark, "-r", path, "-n",
		"-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
		"-T", "fields", "-E", "separator=,",
		"-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len",
		"-e", "ip.src", "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport",
		"-e", "ip.checksum.status", "-e", "udp.checksum.status")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(frames) {
		t.Fatalf("tshark read %d frames, want %d:\n%s\n%s", len(lines), len(frames), out, stderr.String())
	}
	for i, line := range lines {
		p, err := ParseUDP4(frames[i])
		if err != nil {
			t.Fatal(err)
		}
		ts := at(i)
		want := fmt.Sprintf("%d.%09d,%d,%d,%s,%s,%d,%d,1,1", ts.Unix(), ts.Nanosecond(), len(frames[i]), len(frames[i]),
			ipString(p.SrcIP), ipString(p.DstIP), p.SrcPort, p.DstPort)
		if line != want {
			t.Errorf("tshark frame %d:\n got %s\nwant %s (checksum status 1 is Good)", i, line, want)
		}
	}
}

func ipString(a [4]byte) string { return fmt.Sprintf("%d.%d.%d.%d", a[0], a[1], a[2], a[3]) }

// TestPcapEditcap checks the reader against files written by Wireshark's
// editcap: our nanosecond file rewritten as microsecond and as nanosecond
// pcap must read back as the same frames.
func TestPcapEditcap(t *testing.T) {
	editcap := requireTool(t, "editcap", "tshark")
	frames, at, file := writeTestPcap(t, 5, PcapOptions{})
	dir := t.TempDir()
	in := filepath.Join(dir, "in.pcap")
	if err := os.WriteFile(in, file, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"pcap", "nsecpcap"} {
		out := filepath.Join(dir, format+".pcap")
		if msg, err := exec.Command(editcap, "-F", format, in, out).CombinedOutput(); err != nil {
			t.Fatalf("editcap -F %s: %v\n%s", format, err, msg)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r, err := NewPcapReader(f)
		if err != nil {
			t.Fatalf("%s written by editcap: %v", format, err)
		}
		if r.Nanosecond() != (format == "nsecpcap") {
			t.Errorf("%s: Nanosecond() = %v", format, r.Nanosecond())
		}
		for i := range frames {
			rec, err := r.Next()
			if err != nil {
				t.Fatalf("%s record %d: %v", format, i, err)
			}
			want := at(i)
			if format == "pcap" {
				want = want.Truncate(time.Microsecond)
			}
			if !rec.Time.Equal(want) || !bytes.Equal(rec.Data, frames[i]) {
				t.Errorf("%s record %d: time %v want %v, data equal %v", format, i, rec.Time, want, bytes.Equal(rec.Data, frames[i]))
			}
		}
		if _, err := r.Next(); err != io.EOF {
			t.Errorf("%s: after %d records: %v, want io.EOF", format, len(frames), err)
		}
	}
}

func BenchmarkPcapWriterDeliver(b *testing.B) {
	w, err := NewPcapWriter(io.Discard, PcapOptions{})
	if err != nil {
		b.Fatal(err)
	}
	f := make([]byte, 60)
	b.ReportAllocs()
	for b.Loop() {
		w.Deliver(f)
	}
}
