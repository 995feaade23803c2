//go:build qemumigration

package qemumigration_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/test/lib"
)

const (
	peerAddr  = "10.99.0.1"
	guestAddr = "10.99.0.2"
	guestMAC  = "52:54:00:5a:c0:15"
	streamUDP = 6000
	// rate and size of the stream: 800 datagrams of 1400 bytes a second,
	// which a TCG guest verifies with time to spare.
	rate     = 800
	dgram    = 1400
	marker   = "ZCNET-QEMU-MIGRATION rc="
	setupErr = "ZCNET-QEMU-MIGRATION-SETUP-FAILED"
	// streamBefore and streamAfter: seconds of stream verified on the
	// source before the migration starts and on the destination after it
	// ends.
	streamBefore = 4
	streamAfter  = 5
	// readBatch: the guest reads the stream every readBatch, so that at
	// any moment, the guest's pause included, up to that much of it waits
	// unread in receive buffers the NIC wrote: a page the dirty log missed
	// arrives stale at the destination and the guest reads it there.
	readBatch = "500ms"
	// The guest kernel runs with init_on_alloc=0 (Debian's default zeroes
	// every page it allocates, a CPU write QEMU tracks): receive buffers'
	// pages are then written by the NIC alone, so that the dirty log is
	// all that tells QEMU to send them again.
	//
	// migrateBandwidth (bytes/s) stretches the migration over a few
	// seconds, so that the NIC writes into many pages QEMU has sent
	// already and must send again.
	migrateBandwidth = 32 << 20
	// guestMemory is the guest's RAM, all of it below 4 GiB (q35 puts
	// the first 2 GiB there).
	guestMemory = 256 << 20
)

// Virtio feature bits as the guest's features file lists them.
const (
	fGuestCsum     = 1
	fMrgRxbuf      = 15
	fGuestAnnounce = 21
	fVersion1      = 32
	fPacked        = 34
)

type tcase struct {
	name  string
	props string // extra virtio-net-pci properties, on both QEMUs
	want  []int
}

var cases = []tcase{
	{name: "split", want: []int{fVersion1, fMrgRxbuf, fGuestCsum}},
	{name: "packed", props: ",packed=on", want: []int{fVersion1, fMrgRxbuf, fGuestCsum, fPacked}},
}

type setup struct {
	kernel, initrd, work, zcnet, udpstream, qemu string
}

func env(t *testing.T, name string) string {
	t.Helper()
	return lib.Env(t, name, "test/qemu-migration/run.sh", "zcnet, udpstream, the guest kernel and the initramfs")
}

func TestQEMUMigration(t *testing.T) {
	s := setup{kernel: env(t, "ZCNET_QM_KERNEL"), initrd: env(t, "ZCNET_QM_INITRD"), work: env(t, "ZCNET_QM_WORK"),
		zcnet: env(t, "ZCNET_QM_ZCNET"), udpstream: env(t, "ZCNET_QM_UDPSTREAM")}
	var err error
	if s.qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): %v", err)
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install iproute2 iputils-ping): %v", tool, err)
		}
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) { runCase(t, &s, c, i) })
	}
}

// --- the network: a switch namespace with both zcnets' TAPs on a bridge,
// and a peer namespace on a veth -----------------------------------------

type network struct {
	sw, peer string
	a, b     *zcnet
}

func nsRun(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return lib.Run(t, append([]string{"ip", "netns", "exec", ns}, args...)...)
}

func addNamespace(t *testing.T, ns string) {
	lib.Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if b, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, b)
		}
	})
	nsRun(t, ns, "ip", "link", "set", "lo", "up")
	// No IPv6: every frame on the wire is one the test made.
	nsRun(t, ns, "sh", "-c", "echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 && echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6")
}

func startNetwork(t *testing.T, s *setup, out, tag string) *network {
	n := &network{sw: "zcmsw" + tag, peer: "zcmpeer" + tag}
	addNamespace(t, n.sw)
	addNamespace(t, n.peer)
	n.a = startZcnet(t, s, n.sw, "zcma", filepath.Join(out, "zcnet-a"))
	n.b = startZcnet(t, s, n.sw, "zcmb", filepath.Join(out, "zcnet-b"))
	nsRun(t, n.sw, "ip", "link", "add", "br0", "type", "bridge")
	nsRun(t, n.sw, "ip", "link", "add", "vsw", "type", "veth", "peer", "name", "vpeer", "netns", n.peer)
	for _, l := range []string{"zcma", "zcmb", "vsw"} {
		nsRun(t, n.sw, "ip", "link", "set", l, "master", "br0")
		nsRun(t, n.sw, "ip", "link", "set", l, "up")
	}
	nsRun(t, n.sw, "ip", "link", "set", "br0", "up")
	nsRun(t, n.peer, "ip", "addr", "add", peerAddr+"/24", "dev", "vpeer")
	nsRun(t, n.peer, "ip", "link", "set", "vpeer", "up")
	// The peer's stream must not depend on the guest answering ARP: the
	// guest only receives.
	nsRun(t, n.peer, "ip", "neigh", "replace", guestAddr, "lladdr", guestMAC, "dev", "vpeer", "nud", "permanent")
	return n
}

// fdb is the bridge's forwarding entry for the guest's MAC.
func (n *network) fdb(t *testing.T) string {
	b, _ := exec.Command("ip", "netns", "exec", n.sw, "bridge", "fdb", "show", "br", "br0").CombinedOutput()
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, guestMAC) {
			return strings.TrimSpace(l)
		}
	}
	return "none"
}

// --- memory on arrival -----------------------------------------------------

// qemuStaleMarker starts the line checkArrivedMemory logs when pages that
// zcnet never touched arrived stale; run.sh runs a case that failed after
// it again (see checkArrivedMemory).
const qemuStaleMarker = "ZCNET-QM-QEMU-STALE-PAGES"

// checkArrivedMemory compares the guest's memory on the source, paused
// for good, with what arrived at the destination, paused by -S before it
// ran: after a correct migration they are equal byte for byte. A page
// that differs arrived stale: its last write was never sent again.
//
// The pages zcnet could have written while the dirty log was on (the
// source zcnet logs them when the rings stop: every buffer it popped or
// held and the rings) must not be among them: that would be a write the
// dirty log missed, which is what this test exists to catch. Any other
// stale page was written only by the guest's CPU, and QEMU lost it on its
// own: in QEMU before 9.0 (Debian 12 has 7.2), migration's dirty-bitmap
// sync clears a page's bits without making TCG's cached write entries for
// it slow again, so the guest's next writes to that page are not tracked
// (fixed by QEMU commit 03bfc2188f, "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"). Seen here as per-CPU counters and
// page-allocator lists of the guest kernel arriving stale, more often on
// a busy host, and then as the guest crashing on a corrupted free list
// ("list_del corruption ... next is NULL" in rmqueue_bulk) right after it
// resumed, in about half the runs. The guest now flushes its TLB every
// millisecond (udpstream tlbflush), which leaves such losses to the last
// millisecond before its pause; those that remain are logged, not failed,
// and if the case then fails, run.sh runs it again.
func checkArrivedMemory(t *testing.T, c tcase, src, dst *qemu, za *zcnet, out string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r := dst.qmp.must(t, "query-status", nil)
		if m, _ := r.(map[string]any); m["status"] == "paused" {
			break
		}
		if time.Now().After(deadline) {
			dst.Fatalf(t, "the destination has not reached the paused state 30 s after the migration completed")
		}
	}
	began := time.Now()
	read := func(q *qemu) []byte {
		b, err := readGuestRAM(q.Pid())
		if err != nil {
			t.Fatalf("%s: %v", q.Name, err)
		}
		return b
	}
	a, b := read(src), read(dst)
	defer func() { _ = unix.Munmap(a); _ = unix.Munmap(b) }()
	touched := zcnetTouchedPages(t, za.out+".log")
	var missed, lost []string
	for off := 0; off < guestMemory; off += pageSize {
		pa, pb := a[off:off+pageSize], b[off:off+pageSize]
		if bytes.Equal(pa, pb) {
			continue
		}
		n := 0
		for i := range pa {
			if pa[i] != pb[i] {
				n++
			}
		}
		desc := fmt.Sprintf("%#x (%d bytes)", off, n)
		if len(missed)+len(lost) < 64 {
			// Both versions of the page, for whoever reads the failure.
			for side, p := range map[string][]byte{"source": pa, "destination": pb} {
				if err := os.WriteFile(filepath.Join(out, fmt.Sprintf("stale-%#x.%s", off, side)), p, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if touched[uint64(off)/pageSize] {
			missed = append(missed, desc)
		} else {
			lost = append(lost, desc)
		}
	}
	if len(missed) > 0 {
		t.Errorf("pages zcnet could have written arrived stale at the destination (the dirty log missed a write): %s", strings.Join(missed, ", "))
	}
	if len(lost) > 0 {
		t.Logf("%s case=%s: pages zcnet never touched arrived stale, QEMU's own loss (see checkArrivedMemory): %s",
			qemuStaleMarker, c.name, strings.Join(lost, ", "))
	}
	t.Logf("memory on arrival (compared in %v): %d pages compared, %d stale that zcnet touched, %d stale that it never did; %d pages touched",
		time.Since(began).Round(time.Millisecond), guestMemory/pageSize, len(missed), len(lost), len(touched))
}

const pageSize = 4096

// readGuestRAM maps the guest memory of the QEMU with process ID pid
// from its memory backend, the memfd QEMU names "memory-backend-memfd",
// whose offset x is guest physical address x below guestMemory. That is
// the RAM pmemsave would read (without the ROM and VGA windows that hide
// some of it from the guest), in a fraction of the time, which matters
// while the guest waits paused. Unmap it with unix.Munmap.
func readGuestRAM(pid int) ([]byte, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "/memfd:memory-backend-memfd") {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		// Mapped, not read: no copy of either side's memory.
		b, err := unix.Mmap(int(f.Fd()), 0, guestMemory, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("mapping %s (%s): %w", e.Name(), target, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("no memory-backend-memfd among the fds in %s", dir)
}

// zcnetTouchedPages reads the pages a zcnet logged as ones it could have
// written while the dirty log was on (vhost's "guest pages the device
// could have written while logging" debug lines: page-number ranges such
// as "0x2c00-0x2c07,0xfcad"), all of them: each ring logs the device's
// record so far when it stops.
func zcnetTouchedPages(t *testing.T, logPath string) map[uint64]bool {
	t.Helper()
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pages := map[uint64]bool{}
	lines := 0
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, "could have written while logging") {
			continue
		}
		lines++
		_, rest, ok := strings.Cut(line, `"pages": "`)
		list, _, ok2 := strings.Cut(rest, `"`)
		if !ok || !ok2 {
			t.Fatalf("%s: no page list in %q", logPath, line)
		}
		if list == "" {
			continue
		}
		for _, r := range strings.Split(list, ",") {
			lo, hi, isRange := strings.Cut(r, "-")
			first, err := strconv.ParseUint(lo, 0, 64)
			last := first
			if err == nil && isRange {
				last, err = strconv.ParseUint(hi, 0, 64)
			}
			if err != nil || last < first {
				t.Fatalf("%s: bad page range %q", logPath, r)
			}
			for p := first; p <= last; p++ {
				pages[p] = true
			}
		}
	}
	if lines == 0 {
		t.Fatalf("%s: the source zcnet logged no touched pages when its rings stopped (is --log-level debug on?)", logPath)
	}
	return pages
}

// --- zcnet sim ------------------------------------------------------------

type zcnet struct {
	s          *setup
	name, out  string
	sock, tele string
	proc       *lib.Process
	stdout     bytes.Buffer
	summary    appliance.Snapshot
}

func startZcnet(t *testing.T, s *setup, ns, tap, out string) *zcnet {
	dir := t.TempDir()
	z := &zcnet{s: s, name: filepath.Base(out), out: out, sock: filepath.Join(dir, "vhost.sock"),
		tele: filepath.Join(dir, "telemetry.sock")}
	z.proc = lib.StartProcess(t, z.name, out+".log", &z.stdout, "ip", "netns", "exec", ns, s.zcnet, "sim", "--tap", tap,
		// No migration=on: live migration is offered by default.
		"--vhost", z.sock+",mac="+guestMAC, "--telemetry", z.tele, "--stats-period", "0", "--json", "--log-level", "debug")
	z.proc.WaitReady(t, 20*time.Second, func() (bool, string) {
		tapOK := exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", tap).Run() == nil
		_, e1 := os.Stat(z.sock)
		_, e2 := os.Stat(z.tele)
		return tapOK && e1 == nil && e2 == nil, fmt.Sprintf("TAP %v, socket %v, telemetry %v", tapOK, e1, e2)
	})
	return z
}

func (z *zcnet) snapshot(t *testing.T) appliance.Snapshot {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(z.s.zcnet, "stats", "--json", "--socket", z.tele)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("zcnet stats --socket %s: %v: %s", z.tele, err, stderr.String())
	}
	var s appliance.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("zcnet stats of %s: %v: %s", z.name, err, b)
	}
	return s
}

// settle waits until two snapshots a second apart agree and balance.
func (z *zcnet) settle(t *testing.T) appliance.Snapshot {
	prev := z.snapshot(t)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		cur := z.snapshot(t)
		if ledgerOf(cur) == ledgerOf(prev) && len(ledgerOf(cur).problems()) == 0 {
			return cur
		}
		prev = cur
	}
	t.Logf("%s's counters did not settle balanced within 15 s", z.name)
	return prev
}

// stop ends zcnet with SIGINT and reads its JSON summary.
func (z *zcnet) stop(t *testing.T) appliance.Snapshot {
	z.proc.Interrupt(t, 30*time.Second)
	_ = os.WriteFile(z.out+"-summary.json", z.stdout.Bytes(), 0o644)
	if err := json.Unmarshal(z.stdout.Bytes(), &z.summary); err != nil {
		t.Fatalf("%s's summary: %v: %s", z.name, err, z.stdout.Bytes())
	}
	return z.summary
}

// ledger is one zcnet's receive path, wire to guest, and what it sent.
type ledger struct {
	wireIn, wireOut uint64 // frames from the bridge, frames to it
	nicEarly        uint64 // discarded by the MAC or with the receiver off
	nicRx           uint64
	missed, noDesc  uint64
	engineDrops     uint64 // frame causes
	pending         uint64
	delivered       uint64
	guestTx         uint64
	zcRx, cpRx      uint64
	badCopies       string // copy reasons other than no_guest_buffer
	iommu, restarts uint64
	rarp            uint64
	dropCauses      string
}

func ledgerOf(s appliance.Snapshot) ledger {
	var l ledger
	if s.Traffic != nil {
		l.wireIn, l.wireOut = s.Traffic.TAPFromKernel, s.Traffic.TAPToKernel
		l.nicEarly = s.Traffic.SimRxNotReady
		l.iommu = s.Traffic.IOMMUFaults
	}
	if len(s.NICs) > 0 {
		n := s.NICs[0]
		for _, v := range n.Discards() {
			l.nicEarly += v
		}
		l.nicRx, l.missed, l.noDesc = n.RxPackets, n.RxMissed, n.RxNoDescriptor
	}
	if len(s.Ports) > 0 {
		p := s.Ports[0]
		l.delivered, l.pending, l.guestTx = p.RxPackets, p.RxPending, p.TxPackets
		l.zcRx, l.cpRx, l.restarts, l.rarp = p.ZeroCopy.Rx, p.Copied.Rx, p.Restarts, p.TxRARP
		var causes []string
		for k, v := range p.Drops {
			if strings.HasPrefix(k, "rx_") && k != "rx_chain_unusable" {
				l.engineDrops += v
			}
			if v != 0 {
				causes = append(causes, fmt.Sprintf("%s=%d", k, v))
			}
		}
		l.dropCauses = strings.Join(sortStrings(causes), " ")
		var bad []string
		for k, v := range p.CopyReasons {
			if v != 0 && k != "no_guest_buffer" {
				bad = append(bad, fmt.Sprintf("%s=%d", k, v))
			}
		}
		l.badCopies = strings.Join(sortStrings(bad), " ")
	}
	return l
}

// undelivered is every frame from the wire the guest did not get, each
// under a counted cause.
func (l ledger) undelivered() uint64 {
	return l.nicEarly + l.missed + l.noDesc + l.engineDrops + l.pending
}

func (l ledger) problems() []string {
	var p []string
	if l.wireIn != l.nicRx+l.nicEarly {
		p = append(p, fmt.Sprintf("wire → NIC: %d frames from the bridge, the NIC received %d and discarded %d", l.wireIn, l.nicRx, l.nicEarly))
	}
	if l.nicRx != l.delivered+l.engineDrops+l.pending+l.missed+l.noDesc {
		p = append(p, fmt.Sprintf("NIC → guest: the NIC received %d; delivered %d + engine drops %d (%s) + pending %d + missed %d + no descriptor %d",
			l.nicRx, l.delivered, l.engineDrops, l.dropCauses, l.pending, l.missed, l.noDesc))
	}
	if l.badCopies != "" {
		p = append(p, "copies a layout could avoid: "+l.badCopies)
	}
	if l.iommu != 0 {
		p = append(p, fmt.Sprintf("%d IOMMU faults", l.iommu))
	}
	return p
}

func (l ledger) String() string {
	return fmt.Sprintf("from the bridge %d, NIC discarded %d, NIC received %d, missed %d, no descriptor %d, engine drops %d (%s), pending %d, delivered %d (zero-copy %d, copied %d), from the guest %d, RARPs %d, to the bridge %d, restarts %d",
		l.wireIn, l.nicEarly, l.nicRx, l.missed, l.noDesc, l.engineDrops, l.dropCauses, l.pending, l.delivered, l.zcRx, l.cpRx, l.guestTx, l.rarp, l.wireOut, l.restarts)
}

// --- QEMU and its console ---------------------------------------------------

// qemu is one QEMU of the migration, with its QMP connection.
type qemu struct {
	*lib.Console
	qmp *qmp
}

func startQEMU(t *testing.T, s *setup, c tcase, name, sock, qmpSock, out string, extra ...string) *qemu {
	args := []string{
		"-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", fmt.Sprintf("%dM", guestMemory>>20),
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", guestMemory>>20), "-numa", "node,memdev=mem",
		"-chardev", "socket,id=chr0,path=" + sock,
		"-netdev", "vhost-user,id=net0,chardev=chr0",
		// vectors=0: QEMU 7.2 under TCG crashes with MSI-X and vhost-user.
		"-device", "virtio-net-pci,netdev=net0,vectors=0,romfile=,mac=" + guestMAC + c.props,
		"-kernel", s.kernel, "-initrd", s.initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet init_on_alloc=0 ZCM_SIZE=%d ZCM_BATCH=%s", dgram, readBatch),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
	}
	args = append(args, extra...)
	q := &qemu{Console: lib.StartConsole(t, name, s.qemu, args, out, 65536)}
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if q.qmp, err = dialQMP(qmpSock, out+"-qmp.log"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			q.Fatalf(t, "QMP on %s: %v", qmpSock, err)
		}
	}
	t.Cleanup(q.qmp.close)
	return q
}

// await returns the rest of the first console line that starts with prefix
// and satisfies ok (nil: any).
func (q *qemu) await(t *testing.T, prefix, what string, d time.Duration, ok func(string) bool) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case line, open := <-q.Lines:
			switch {
			case !open:
				q.Fatalf(t, "%s's console closed before the guest %s (no %q line)", q.Name, what, prefix)
			case strings.HasPrefix(line, "ZCM-BAD "):
				t.Errorf("the guest found a bad datagram: %s", line)
			case strings.HasPrefix(line, prefix) && (ok == nil || ok(strings.TrimPrefix(line, prefix))):
				return strings.TrimPrefix(line, prefix)
			case strings.HasPrefix(line, setupErr), strings.HasPrefix(line, marker) && prefix != marker:
				q.Fatalf(t, "the guest stopped before it %s: %s", what, line)
			}
		case <-timer.C:
			q.Fatalf(t, "the guest has not %s after %v on %s (no %q line)", what, d, q.Name, prefix)
		}
	}
}

// --- QMP -----------------------------------------------------------------------

// qmp is a QMP connection: commands one at a time, events kept with
// QEMU's timestamps.
type qmp struct {
	conn    net.Conn
	mu      sync.Mutex
	replies chan map[string]any
	evMu    sync.Mutex
	events  []qmpEvent
	log     *os.File
}

type qmpEvent struct {
	name string
	at   time.Time
	data map[string]any
}

func dialQMP(path, logPath string) (*qmp, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	f, err := os.Create(logPath)
	if err != nil {
		c.Close()
		return nil, err
	}
	q := &qmp{conn: c, replies: make(chan map[string]any, 16), log: f}
	go q.read()
	if _, err := q.cmd("qmp_capabilities", nil); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) read() {
	defer close(q.replies)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fmt.Fprintf(q.log, "%s <- %s\n", time.Now().Format("15:04:05.000"), sc.Text())
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if ev, ok := m["event"].(string); ok {
			ts, _ := m["timestamp"].(map[string]any)
			sec, _ := ts["seconds"].(float64)
			usec, _ := ts["microseconds"].(float64)
			data, _ := m["data"].(map[string]any)
			q.evMu.Lock()
			q.events = append(q.events, qmpEvent{name: ev, at: time.Unix(int64(sec), int64(usec)*1000), data: data})
			q.evMu.Unlock()
			continue
		}
		if _, greeting := m["QMP"]; greeting {
			continue
		}
		q.replies <- m
	}
}

func (q *qmp) cmd(name string, args map[string]any) (any, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	fmt.Fprintf(q.log, "%s -> %s\n", time.Now().Format("15:04:05.000"), b)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	select {
	case m, ok := <-q.replies:
		if !ok {
			return nil, fmt.Errorf("QMP %s: connection closed", name)
		}
		if e, ok := m["error"]; ok {
			return nil, fmt.Errorf("QMP %s: %v", name, e)
		}
		return m["return"], nil
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("QMP %s: no reply in 30 s", name)
	}
}

func (q *qmp) must(t *testing.T, name string, args map[string]any) any {
	t.Helper()
	r, err := q.cmd(name, args)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// event returns the first event called name, if one came.
func (q *qmp) event(name string) (qmpEvent, bool) {
	q.evMu.Lock()
	defer q.evMu.Unlock()
	for _, e := range q.events {
		if e.name == name {
			return e, true
		}
	}
	return qmpEvent{}, false
}

func (q *qmp) close() {
	q.conn.Close()
	q.log.Close()
}

// --- the stream's sender ------------------------------------------------------

type sender struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	done   chan error
	times  string
	start  time.Time
	sentAt []time.Time
}

func startSender(t *testing.T, s *setup, n *network, out string) *sender {
	sn := &sender{done: make(chan error, 1), times: out + "-send-times.bin"}
	sn.cmd = exec.Command("ip", "netns", "exec", n.peer, s.udpstream, "send",
		"-dst", fmt.Sprintf("%s:%d", guestAddr, streamUDP), "-rate", strconv.Itoa(rate), "-size", strconv.Itoa(dgram), "-times", sn.times)
	sn.cmd.Stdout, sn.cmd.Stderr = &sn.out, &sn.out
	sn.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sn.cmd.Start(); err != nil {
		t.Fatalf("start the sender: %v", err)
	}
	sn.start = time.Now()
	go func() { sn.done <- sn.cmd.Wait() }()
	t.Cleanup(func() {
		if sn.cmd.ProcessState == nil {
			_ = sn.cmd.Process.Kill()
			<-sn.done
		}
	})
	return sn
}

// stop has the sender end its stream (it then sends the end marker for a
// second) and reads the send times.
func (sn *sender) stop(t *testing.T) {
	// ip netns exec runs the sender in its own process (exec), so the
	// signal reaches it.
	_ = sn.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-sn.done:
		if err != nil {
			t.Fatalf("the sender failed: %v: %s", err, sn.out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the sender did not stop 20 s after SIGINT: %s", sn.out.String())
	}
	b, err := os.ReadFile(sn.times)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+8 <= len(b); i += 8 {
		sn.sentAt = append(sn.sentAt, time.Unix(0, int64(binary.LittleEndian.Uint64(b[i:]))))
	}
	t.Logf("sender: %s", strings.TrimSpace(sn.out.String()))
}

// seqAt is the first seq sent at or after time at.
func (sn *sender) seqAt(at time.Time) int {
	return int(at.Sub(sn.start) / (time.Second / rate))
}

// --- the case -------------------------------------------------------------------

// progress is a ZCM-PROGRESS/RESULT line.
type progress struct{ unique, bytes, corrupt, dups, other, maxSeq int64 }

func parseProgress(s string) progress {
	var p progress
	for _, kv := range strings.Fields(s) {
		k, v, _ := strings.Cut(kv, "=")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "unique":
			p.unique = n
		case "bytes":
			p.bytes = n
		case "corrupt":
			p.corrupt = n
		case "dups":
			p.dups = n
		case "other":
			p.other = n
		case "maxseq":
			p.maxSeq = n
		}
	}
	return p
}

func fields(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Fields(s) {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func runCase(t *testing.T, s *setup, c tcase, idx int) {
	out := filepath.Join(s.work, c.name)
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	n := startNetwork(t, s, out, fmt.Sprintf("%d-%d", os.Getpid(), idx))
	t.Cleanup(func() {
		if t.Failed() {
			for _, z := range []*zcnet{n.a, n.b} {
				if !z.proc.HasExited() {
					t.Logf("%s at the failure: %s", z.name, ledgerOf(z.snapshot(t)))
				}
			}
		}
	})
	dir := t.TempDir()
	migSock := filepath.Join(dir, "migrate.sock")

	src := startQEMU(t, s, c, "source QEMU", n.a.sock, filepath.Join(dir, "qmp-a.sock"), filepath.Join(out, "qemu-a"))
	feats := src.await(t, "ZCM-FEATURES ", "brought eth0 up", 150*time.Second, nil)
	for _, b := range c.want {
		if b >= len(feats) || feats[b] != '1' {
			t.Errorf("the guest did not negotiate feature bit %d (features %s)", b, feats)
		}
	}
	if fGuestAnnounce < len(feats) && feats[fGuestAnnounce] == '1' {
		t.Logf("the guest negotiated GUEST_ANNOUNCE")
	}
	_ = src.await(t, "ZCM-PING received=", "pinged the peer", 60*time.Second, nil)
	_ = src.await(t, "ZCM-LISTENING", "listened for the stream", 30*time.Second, nil)
	t.Logf("bridge: the guest's MAC at %s", n.fdb(t))

	// Both zcnets' counters before the stream: the losses to explain are
	// what they count from here on.
	preA, preB := ledgerOf(n.a.snapshot(t)), ledgerOf(n.b.snapshot(t))
	sn := startSender(t, s, n, filepath.Join(out, "stream"))
	pre := parseProgress(src.await(t, "ZCM-PROGRESS ", "received the stream on the source", 60*time.Second,
		func(l string) bool { return parseProgress(l).unique >= streamBefore*rate }))
	t.Logf("on the source: %d datagrams verified (%d bytes), up to seq %d", pre.unique, pre.bytes, pre.maxSeq)

	// The destination: same machine, its own memory, the second zcnet.
	// -S: the guest stays paused once it has arrived, until the memory
	// both sides hold has been compared (checkArrivedMemory).
	dst := startQEMU(t, s, c, "destination QEMU", n.b.sock, filepath.Join(dir, "qmp-b.sock"), filepath.Join(out, "qemu-b"),
		"-incoming", "unix:"+migSock, "-S")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(migSock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			dst.Fatalf(t, "the destination QEMU has not made %s after 10 s", migSock)
		}
	}
	src.qmp.must(t, "migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth})
	migStart := time.Now()
	src.qmp.must(t, "migrate", map[string]any{"uri": "unix:" + migSock})
	var info map[string]any
	for deadline := time.Now().Add(180 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := src.qmp.must(t, "query-migrate", nil)
		info, _ = r.(map[string]any)
		st, _ := info["status"].(string)
		if st == "completed" {
			break
		}
		if st == "failed" || st == "cancelled" || time.Now().After(deadline) {
			b, _ := json.Marshal(info)
			src.Fatalf(t, "migration %s after %v: %s", st, time.Since(migStart), b)
		}
	}
	migDone := time.Now()
	ib, _ := json.Marshal(info)
	t.Logf("migration completed in %.1fs: %s", migDone.Sub(migStart).Seconds(), ib)
	checkArrivedMemory(t, c, src, dst, n.a, out)
	dst.qmp.must(t, "cont", nil)
	var paused, resumed time.Time
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if e, ok := dst.qmp.event("RESUME"); ok {
			resumed = e.at
			break
		}
		if time.Now().After(deadline) {
			dst.Fatalf(t, "the destination QEMU did not resume 30 s after the migration completed")
		}
	}
	if e, ok := src.qmp.event("STOP"); ok {
		paused = e.at
	} else {
		t.Fatalf("the source QEMU sent no STOP event")
	}
	t.Logf("guest paused at %s on the source, resumed at %s on the destination (%.0f ms)",
		paused.Format("15:04:05.000"), resumed.Format("15:04:05.000"), resumed.Sub(paused).Seconds()*1000)

	// The source QEMU stays paused after a migration; it goes now, as an
	// operator's would.
	if _, err := src.qmp.cmd("quit", nil); err != nil {
		t.Logf("quit on the source: %v", err)
	}
	if !src.Wait(20 * time.Second) {
		t.Errorf("the source QEMU did not quit within 20 s")
	}
	src.Save()

	// The stream goes on at the destination.
	after := sn.seqAt(time.Now()) + streamAfter*rate
	post := parseProgress(dst.await(t, "ZCM-PROGRESS ", "received the stream on the destination", 60*time.Second,
		func(l string) bool { return parseProgress(l).maxSeq >= int64(after) }))
	t.Logf("on the destination: %d datagrams verified in all, up to seq %d; bridge: %s", post.unique, post.maxSeq, n.fdb(t))
	sn.stop(t)

	res := parseProgress(dst.await(t, "ZCM-RESULT ", "verified the whole stream", 60*time.Second, nil))
	end := fields(dst.await(t, "ZCM-END ", "reported the stream's end", 10*time.Second, nil))
	udp := fields(dst.await(t, "ZCM-UDP ", "reported its UDP counters", 10*time.Second, nil))
	stats := fields(dst.await(t, "ZCM-STATS ", "reported eth0's statistics", 30*time.Second, nil))
	if rc := dst.await(t, marker, "finished", 30*time.Second, nil); rc != "0" {
		dst.Fatalf(t, "the guest finished with rc=%s", rc)
	}
	if !dst.Wait(30 * time.Second) {
		t.Errorf("the destination QEMU did not exit 30 s after the guest powered off")
	}
	dst.Save()

	la, lb := ledgerOf(n.a.settle(t)), ledgerOf(n.b.settle(t))
	fa, fb := ledgerOf(n.a.stop(t)), ledgerOf(n.b.stop(t))
	t.Logf("zcnet A (source): %s", fa)
	t.Logf("zcnet B (destination): %s", fb)
	for name, l := range map[string]ledger{"zcnet A": la, "zcnet B": lb, "zcnet A's summary": fa, "zcnet B's summary": fb} {
		for _, p := range l.problems() {
			t.Errorf("%s: %s", name, p)
		}
	}
	// QEMU asks the destination's back end for a RARP (SEND_RARP) when
	// the guest has no GUEST_ANNOUNCE: without it the bridge would keep
	// sending the stream to the source's port.
	if fb.rarp == 0 || fa.rarp != 0 {
		t.Errorf("RARPs sent: by the source zcnet %d, by the destination %d; want only the destination's", fa.rarp, fb.rarp)
	}
	if fa.zcRx == 0 || fb.zcRx == 0 {
		t.Errorf("zero-copy receives: source %d, destination %d; want both > 0", fa.zcRx, fb.zcRx)
	}

	// Every byte right.
	sent, _ := strconv.ParseInt(end["sent"], 10, 64)
	lost, _ := strconv.ParseInt(end["lost"], 10, 64)
	if res.corrupt != 0 || res.dups != 0 || res.other != 0 {
		t.Errorf("the guest received %d corrupt datagrams, %d duplicates and %d foreign ones; want none", res.corrupt, res.dups, res.other)
	}
	if int(sent) != len(sn.sentAt) || res.unique+lost != sent {
		t.Errorf("the sender sent %d datagrams (the end marker says %d); the guest verified %d and lost %d", len(sn.sentAt), sent, res.unique, lost)
	}
	preMig := int64(sn.seqAt(migStart))
	t.Logf("stream: %d datagrams sent, %d verified byte for byte (%d bytes): before the migration (seq < %d) %d, during and after it %d; lost %d: %s",
		sent, res.unique, res.bytes, preMig, pre.unique, res.unique-pre.unique, lost, end["lost_ranges"])

	// Every loss explained: each lost datagram is counted by a zcnet (or
	// the guest's socket), below. Those sent while the guest was paused or
	// before the bridge learned its new port are the migration's; others
	// (the NIC out of buffers or its packet buffer full while a TCG guest
	// or the lcores were starved of CPU) are listed with their time.
	lo, hi := paused.Add(-time.Second), resumed.Add(2*time.Second)
	if lost > 0 {
		for _, r := range strings.Split(end["lost_ranges"], ",") {
			a, b, ok := strings.Cut(r, "-")
			from, e1 := strconv.Atoi(a)
			to, e2 := strconv.Atoi(b)
			if !ok || e1 != nil || e2 != nil || to >= len(sn.sentAt) {
				t.Errorf("lost range %q: cannot place it", r)
				continue
			}
			f, l := sn.sentAt[from], sn.sentAt[to]
			where := "in the switch-over"
			if f.Before(lo) || l.After(hi) {
				where = "outside the switch-over"
			}
			t.Logf("lost %d-%d (%d datagrams) %s: sent %.0f ms to %.0f ms after the guest paused", from, to, to-from+1, where,
				f.Sub(paused).Seconds()*1000, l.Sub(paused).Seconds()*1000)
		}
	}
	rcvbuf, _ := strconv.ParseUint(udp["RcvbufErrors"], 10, 64)
	lossA, lossB := fa.undelivered()-preA.undelivered(), fb.undelivered()-preB.undelivered()
	counted := lossA + lossB + rcvbuf
	// Among the frames the zcnets did not deliver since the stream ran are
	// also broadcasts one zcnet sent (the destination's RARPs, the
	// guest's own) that the bridge flooded to the other.
	flooded := fa.wireOut - preA.wireOut + fb.wireOut - preB.wireOut
	if uint64(lost) > counted || uint64(lost)+flooded < counted {
		t.Errorf("lost %d datagrams; counted since the stream ran: source zcnet %d + destination zcnet %d + the guest's socket %d = %d (of which up to %d may be frames the zcnets sent, flooded by the bridge)",
			lost, lossA, lossB, rcvbuf, counted, flooded)
	} else {
		t.Logf("losses counted since the stream ran: source zcnet %d, destination zcnet %d, guest socket %d; frames the zcnets sent to the bridge meanwhile %d",
			lossA, lossB, rcvbuf, flooded)
	}

	// No buffer lost or duplicated over the switch-over: the guest's
	// driver received exactly what both zcnets delivered.
	rx, _ := strconv.ParseUint(stats["rx_packets"], 10, 64)
	if rx != fa.delivered+fb.delivered {
		t.Errorf("the guest's eth0 received %d frames; zcnet A delivered %d and zcnet B %d (sum %d)", rx, fa.delivered, fb.delivered, fa.delivered+fb.delivered)
	}
	for _, k := range []string{"rx_errors", "rx_dropped", "rx_length_errors", "rx_over_errors", "rx_crc_errors", "rx_frame_errors", "rx_fifo_errors", "rx_missed_errors"} {
		if v := stats[k]; v != "0" {
			t.Errorf("guest eth0 %s = %q, want 0", k, v)
		}
	}
	if v := udp["InCsumErrors"]; v != "0" {
		t.Errorf("guest UDP InCsumErrors = %q, want 0", v)
	}
	t.Logf("%s: %.1fs; guest eth0 rx_packets %s; UDP %s", c.name, time.Since(begin).Seconds(), stats["rx_packets"], strings.Join(sortedKV(udp), " "))
}

func sortedKV(m map[string]string) []string {
	var s []string
	for k, v := range m {
		s = append(s, k+"="+v)
	}
	return sortStrings(s)
}

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}
