// Command udpstream is both ends of the migration test's verified stream
// (test/qemu-migration): `udpstream send` in the peer namespace sends UDP
// datagrams numbered from 0 at a fixed rate, each carrying a pattern
// derived from its number, and `udpstream recv` in the guest checks every
// byte of every datagram it receives against the pattern its number
// names. Built statically (CGO_ENABLED=0) for the guest's initramfs.
//
// Datagram layout (all little-endian): magic "ZCM1" (data) or "ZCME" (end
// of stream, seq = number of data datagrams sent), u64 seq, then the
// pattern of seq up to the datagram's size. The receiver counts a datagram
// whose size, magic or any pattern byte is wrong as corrupt, one whose seq
// it has seen as a duplicate (a stale page in migrated guest memory shows
// as one or the other), and at the end lists the sequence ranges it never
// received.
//
// `udpstream tlbflush` runs in the guest beside recv: see tlbFlush.
package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

const (
	hdrLen   = 12
	maxSeqs  = 1 << 24
	endCount = 20
)

var (
	magicData = []byte("ZCM1")
	magicEnd  = []byte("ZCME")
)

// fill writes seq's pattern into b: xorshift64 words seeded by seq.
func fill(b []byte, seq uint64) {
	x := seq*0x9E3779B97F4A7C15 ^ 0xD1B54A32D192ED03
	var w [8]byte
	for i := 0; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(w[:], x)
		copy(b[i:], w[:])
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: udpstream send|recv|tlbflush [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "send":
		err = send(os.Args[2:])
	case "recv":
		err = recv(os.Args[2:])
	case "tlbflush":
		err = tlbFlush(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: send, recv or tlbflush", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "udpstream:", err)
		os.Exit(1)
	}
}

// send streams until SIGINT or SIGTERM, then sends the end marker and
// writes each datagram's send time (u64 Unix ns per seq) to -times.
func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	dst := fs.String("dst", "", "destination host:port")
	rate := fs.Int("rate", 1000, "datagrams per second")
	size := fs.Int("size", 1400, "UDP payload bytes")
	times := fs.String("times", "", "file for the send times")
	_ = fs.Parse(args)
	if *size < hdrLen+8 || *size > 65000 || *rate <= 0 {
		return fmt.Errorf("-size %d -rate %d", *size, *rate)
	}
	conn, err := net.Dial("udp", *dst)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	buf := make([]byte, *size+8)
	var sent []int64
	var errs int
	start := time.Now()
	interval := time.Second / time.Duration(*rate)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	fmt.Printf("SEND-START %d\n", start.UnixNano())
loop:
	for {
		select {
		case <-stop:
			break loop
		case now := <-tick.C:
			// Catch up to the schedule in bursts of at most 50.
			due := int(now.Sub(start) / interval)
			for n := 0; len(sent) < due && n < 50; n++ {
				seq := uint64(len(sent))
				b := buf[:*size]
				copy(b, magicData)
				binary.LittleEndian.PutUint64(b[4:], seq)
				fill(b[hdrLen:], seq)
				sent = append(sent, time.Now().UnixNano())
				if _, err := conn.Write(b); err != nil {
					errs++ // ECONNREFUSED from an ICMP error; the datagram counts as sent
				}
			}
		}
	}
	end := make([]byte, hdrLen)
	copy(end, magicEnd)
	binary.LittleEndian.PutUint64(end[4:], uint64(len(sent)))
	for range endCount {
		_, _ = conn.Write(end)
		time.Sleep(50 * time.Millisecond)
	}
	if *times != "" {
		out := make([]byte, 8*len(sent))
		for i, t := range sent {
			binary.LittleEndian.PutUint64(out[8*i:], uint64(t))
		}
		if err := os.WriteFile(*times, out, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("SEND-DONE sent=%d send_errors=%d seconds=%.1f\n", len(sent), errs, time.Since(start).Seconds())
	return nil
}

// receiver is the guest's verifying end.
type receiver struct {
	size         int
	seen         []uint64 // bitmap of received seqs
	unique, dups uint64
	corrupt      uint64
	bytes        uint64 // verified payload bytes of unique datagrams
	other        uint64 // datagrams that are no data and no end marker
	maxSeq       int64
	reported     int
	want         []byte
}

func (r *receiver) check(b []byte) (end bool, total uint64) {
	if len(b) == hdrLen && bytes.Equal(b[:4], magicEnd) {
		return true, binary.LittleEndian.Uint64(b[4:])
	}
	if len(b) < hdrLen || !bytes.Equal(b[:4], magicData) {
		r.other++
		r.bad("datagram of %d bytes without the stream's magic: % x", len(b), b[:min(len(b), 16)])
		return false, 0
	}
	seq := binary.LittleEndian.Uint64(b[4:])
	if len(b) != r.size || seq >= maxSeqs {
		r.corrupt++
		r.bad("seq %d: %d bytes, want %d", seq, len(b), r.size)
		return false, 0
	}
	fill(r.want, seq)
	if !bytes.Equal(b[hdrLen:], r.want) {
		r.corrupt++
		i := 0
		for i < len(r.want) && b[hdrLen+i] == r.want[i] {
			i++
		}
		r.bad("seq %d: payload differs from byte %d of %d (got % x, want % x)", seq, hdrLen+i, len(b),
			b[hdrLen+i:min(len(b), hdrLen+i+8)], r.want[i:min(len(r.want), i+8)])
		return false, 0
	}
	w, bit := seq/64, uint64(1)<<(seq%64)
	for uint64(len(r.seen)) <= w {
		r.seen = append(r.seen, 0)
	}
	if r.seen[w]&bit != 0 {
		r.dups++
		r.bad("seq %d received twice", seq)
		return false, 0
	}
	r.seen[w] |= bit
	r.unique++
	r.bytes += uint64(len(b))
	if int64(seq) > r.maxSeq {
		r.maxSeq = int64(seq)
	}
	return false, 0
}

func (r *receiver) bad(format string, args ...any) {
	if r.reported < 20 {
		r.reported++
		fmt.Printf("ZCM-BAD %s\n", fmt.Sprintf(format, args...))
	}
}

// missing lists the ranges of seqs below total never received.
func (r *receiver) missing(total uint64) (n uint64, ranges []string) {
	var from int64 = -1
	for s := uint64(0); s <= total; s++ {
		got := s < total && s/64 < uint64(len(r.seen)) && r.seen[s/64]&(1<<(s%64)) != 0
		switch {
		case s < total && !got && from < 0:
			from = int64(s)
		case (got || s == total) && from >= 0:
			n += s - uint64(from)
			ranges = append(ranges, fmt.Sprintf("%d-%d", from, s-1))
			from = -1
		}
	}
	return n, ranges
}

func (r *receiver) progress(tag string) {
	fmt.Printf("%s unique=%d bytes=%d maxseq=%d corrupt=%d dups=%d other=%d\n",
		tag, r.unique, r.bytes, r.maxSeq, r.corrupt, r.dups, r.other)
}

// recv verifies the stream until its end marker, printing progress every
// second and the result at the end.
func recv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ExitOnError)
	port := fs.Int("port", 6000, "UDP port")
	size := fs.Int("size", 1400, "UDP payload bytes of a data datagram")
	batch := fs.Duration("batch", 0, "read what has arrived, then sleep this long: frames wait in the socket, their data in the receive buffers the device wrote")
	_ = fs.Parse(args)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *port})
	if err != nil {
		return err
	}
	defer conn.Close()
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			// SO_RCVBUFFORCE (root): ride out the guest's pauses.
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 16<<20)
		})
	}
	r := &receiver{size: *size, maxSeq: -1, want: make([]byte, *size-hdrLen)}
	fmt.Printf("ZCM-LISTENING port=%d\n", *port)
	buf := make([]byte, 65536)
	next := time.Now().Add(time.Second)
	for {
		if *batch > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
		} else {
			_ = conn.SetReadDeadline(next)
		}
		n, _, err := conn.ReadFromUDP(buf)
		if err == nil {
			if end, total := r.check(buf[:n]); end {
				lost, ranges := r.missing(total)
				r.progress("ZCM-RESULT")
				fmt.Printf("ZCM-END sent=%d lost=%d lost_ranges=%s\n", total, lost, strings.Join(head(ranges, 50), ","))
				fmt.Printf("ZCM-UDP %s\n", udpCounters())
				return nil
			}
		} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return err
		} else if *batch > 0 {
			time.Sleep(*batch) // all read: let the next batch wait in the socket
		}
		if now := time.Now(); !now.Before(next) {
			r.progress("ZCM-PROGRESS")
			next = now.Add(time.Second)
		}
	}
}

func head(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("...(%d more)", len(s)-n))
	}
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

// udpCounters is the kernel's UDP counters (/proc/net/snmp) as name=value.
func udpCounters() string {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return "unreadable=" + err.Error()
	}
	var names, vals []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "Udp: ") {
			continue
		}
		if names == nil {
			names = strings.Fields(l)[1:]
		} else {
			vals = strings.Fields(l)[1:]
		}
	}
	var kv []string
	for i := range names {
		if i < len(vals) {
			kv = append(kv, names[i]+"="+vals[i])
		}
	}
	sort.Strings(kv)
	return strings.Join(kv, " ")
}

// tlbFlush makes QEMU flush the guest CPU's TLB every -period, until
// killed, by turning the memory decoding of an idle PCI device (one with
// a memory BAR and no driver) off and on again: each change makes QEMU
// rebuild its memory map, which under TCG flushes every vCPU's TLB.
//
// It works around a bug of QEMU before 9.0 (the test runs Debian 12's 7.2)
// that loses guest writes during a migration: a dirty-bitmap sync clears a
// page's dirty bits but leaves the TLB entries that write to it without
// tracking, so the guest's next writes to a page it writes all the time
// (per-CPU counters, the page allocator's lists) are never sent, and the
// guest may crash on the destination (fixed upstream by commit
// 03bfc2188f). After a flush, the first write to each page is tracked
// again, so only writes within a period of the guest's pause can be lost.
// The host test still compares the memory that arrives with the source's
// (checkArrivedMemory), so what this does not prevent is seen.
func tlbFlush(args []string) error {
	fs := flag.NewFlagSet("tlbflush", flag.ExitOnError)
	period := fs.Duration("period", time.Millisecond, "time between flushes")
	_ = fs.Parse(args)
	dev, err := idlePCIDevice()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dev+"/config", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var cmd [2]byte
	if _, err := f.ReadAt(cmd[:], 4); err != nil {
		return fmt.Errorf("%s: reading the command register: %w", dev, err)
	}
	const memorySpace = 1 << 1
	off := cmd
	off[0] ^= memorySpace
	fmt.Printf("ZCM-TLBFLUSH %s every %v\n", dev, *period)
	for {
		if _, err := f.WriteAt(off[:], 4); err != nil {
			return err
		}
		if _, err := f.WriteAt(cmd[:], 4); err != nil {
			return err
		}
		time.Sleep(*period)
	}
}

// idlePCIDevice finds a PCI device in sysfs with a memory BAR and no
// driver bound (q35's built-in AHCI controller in the test's guest).
func idlePCIDevice() (string, error) {
	devs, err := filepath.Glob("/sys/bus/pci/devices/*")
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if _, err := os.Lstat(d + "/driver"); err == nil {
			continue
		}
		res, err := os.ReadFile(d + "/resource")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(res), "\n") {
			var start, end, flags uint64
			if n, _ := fmt.Sscanf(line, "0x%x 0x%x 0x%x", &start, &end, &flags); n == 3 && flags&0x200 != 0 && end > start {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("no PCI device with a memory BAR and no driver in /sys/bus/pci/devices")
}
