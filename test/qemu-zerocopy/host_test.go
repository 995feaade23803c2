//go:build qemuzerocopy

package qemuzerocopy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcnet/zcnet/test/lib"
)

const (
	nsAddr    = "10.99.0.1"
	guestAddr = "10.99.0.2"
	tapName   = "zcq0"
	// guestMAC is the guest's own address, not the simulated port's: the
	// NIC must accept unicast to it.
	guestMAC = "52:54:00:5a:c0:01"
	guestRAM = 512 << 20
	marker   = "ZCNET-QEMU-ZEROCOPY rc="
	setupErr = "ZCNET-QEMU-ZEROCOPY-SETUP-FAILED"
	// TCP ports in the namespace: the guest sends to recvPort and
	// receives from sendPort.
	recvPort = 5001
	sendPort = 5002
	goPort   = 5009
)

// Virtio feature bits as the guest's features file lists them.
const (
	fCsum      = 0
	fGuestCsum = 1
	fGuestTSO4 = 7
	fGuestTSO6 = 8
	fHostTSO4  = 11
	fHostTSO6  = 12
	fMrgRxbuf  = 15
	fVersion1  = 32
	fPacked    = 34
)

var featureNames = map[int]string{
	fCsum: "CSUM", fGuestCsum: "GUEST_CSUM", fGuestTSO4: "GUEST_TSO4", fGuestTSO6: "GUEST_TSO6",
	fHostTSO4: "HOST_TSO4", fHostTSO6: "HOST_TSO6", fMrgRxbuf: "MRG_RXBUF", fVersion1: "VERSION_1",
	fPacked: "RING_PACKED",
}

// allowedCopies are the copy reasons that are no layout's fault: frames
// that arrived while the guest had no buffer posted, held in host buffers
// until it posted one. Every other reason means a buffer Linux posted was
// not used zero-copy.
var allowedCopies = map[string]bool{"no_guest_buffer": true}

// tcase is one QEMU configuration.
type tcase struct {
	name string
	// props are extra virtio-net-pci properties.
	props string
	// hugetlbfs: guest RAM in a file on /dev/hugepages instead of a memfd.
	hugetlbfs bool
	// killFirst: a first QEMU streams both ways and is killed with SIGKILL
	// mid-transfer; a second one, against the same zcnet, runs the case.
	killFirst bool
	// want and notWant are feature bits the guest must (not) have.
	want, notWant []int
	// layout says which receive buffers Linux posts, for the log.
	layout string
}

const offloadsOff = ",csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off," +
	"host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off"

var cases = []tcase{
	{
		name: "default", layout: "mergeable buffers, split ring, memfd",
		want:    []int{fVersion1, fMrgRxbuf, fCsum, fGuestCsum, fGuestTSO4, fHostTSO4},
		notWant: []int{fPacked},
	},
	{
		name: "offloads-off", props: offloadsOff, layout: "mergeable buffers, no checksum or TSO offload",
		want:    []int{fVersion1, fMrgRxbuf},
		notWant: []int{fCsum, fGuestCsum, fGuestTSO4, fGuestTSO6, fHostTSO4, fHostTSO6},
	},
	{
		name: "mrg-off-big", props: ",mrg_rxbuf=off",
		layout:  "no mergeable buffers, guest TSO: big packets (header descriptor + 4 KiB pages)",
		want:    []int{fVersion1, fGuestTSO4, fGuestCsum},
		notWant: []int{fMrgRxbuf},
	},
	{
		name: "mrg-off-small", props: ",mrg_rxbuf=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off",
		layout:  "no mergeable buffers, no guest TSO: one 1530-byte buffer per frame",
		want:    []int{fVersion1},
		notWant: []int{fMrgRxbuf, fGuestTSO4, fGuestTSO6},
	},
	{
		name: "packed", props: ",packed=on", layout: "packed ring, mergeable buffers",
		want: []int{fVersion1, fPacked, fMrgRxbuf},
	},
	{
		name: "hugetlbfs", hugetlbfs: true, layout: "guest RAM on hugetlbfs",
		want: []int{fVersion1, fMrgRxbuf},
	},
	{
		name: "qemu-killed", killFirst: true, layout: "QEMU killed mid-transfer, a new QEMU on the same zcnet",
		want: []int{fVersion1, fMrgRxbuf},
	},
}

// env returns a variable run.sh sets, failing the test if it is missing.
func env(t *testing.T, name string) string {
	t.Helper()
	return lib.Env(t, name, "test/qemu-zerocopy/run.sh", "zcnet, the guest kernel and the initramfs")
}

// setup is what every case needs from the host.
type setup struct {
	kernel, initrd, work, zcnet string
	qemu, busybox               string
	mib                         int
}

func TestQEMUZeroCopy(t *testing.T) {
	s := setup{
		kernel: env(t, "ZCNET_QZ_KERNEL"), initrd: env(t, "ZCNET_QZ_INITRD"),
		work: env(t, "ZCNET_QZ_WORK"), zcnet: env(t, "ZCNET_QZ_ZCNET"),
	}
	var err error
	if s.mib, err = strconv.Atoi(env(t, "ZCNET_QZ_MIB")); err != nil || s.mib <= 0 {
		t.Fatalf("ZCNET_QZ_MIB=%q: want a positive number of MiB", os.Getenv("ZCNET_QZ_MIB"))
	}
	for _, f := range []string{s.kernel, s.initrd, s.zcnet} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("missing: %v", err)
		}
	}
	if s.qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): %v", err)
	}
	if s.busybox, err = exec.LookPath("busybox"); err != nil {
		t.Fatalf("busybox is not installed (apt-get install busybox-static); the namespace side uses its nc: %v", err)
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install iproute2 iputils-ping): %v", tool, err)
		}
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runCase(t, &s, c, i)
		})
	}
}

func runCase(t *testing.T, s *setup, c tcase, idx int) {
	out := filepath.Join(s.work, c.name)
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if c.hugetlbfs {
		if free := hugePagesFree(t); free < guestRAM>>21 {
			t.Fatalf("%d free 2 MiB hugepages; the hugetlbfs guest needs %d (make hugepages)", free, guestRAM>>21)
		}
	}
	start := time.Now()
	r := startRig(t, s, out, fmt.Sprintf("zcq%d-%d", os.Getpid(), idx))
	// On a failure while zcnet runs, its counters tell where frames went.
	t.Cleanup(func() {
		if t.Failed() && !r.zc.HasExited() {
			if c, err := r.trySnapshot(); err == nil {
				t.Logf("zcnet's counters at the failure:\n%s", c.table())
			}
		}
	})

	// The namespace's file for the guest.
	sendFile := filepath.Join(out, "to-guest.bin")
	sendSum := writeRandom(t, sendFile, s.mib<<20)

	if c.killFirst {
		streamAndKill(t, s, r, c, out)
		at := r.settle(t, "after QEMU was killed")
		t.Logf("counters after the first QEMU was killed mid-transfer:\n%s", at.table())
		for _, p := range at.problems() {
			t.Errorf("after the kill: %s", p)
		}
	}

	res := runGuest(t, s, r, c, out, sendFile, sendSum)
	t.Logf("guest: features %s; ping to the namespace %d/3, from the namespace %d/3; %d MiB each way in %.1fs",
		featureList(res.features), res.pingHost, res.pingGuest, s.mib, res.transfer.Seconds())

	live := r.settle(t, "after the guest powered off")
	final := r.stop(t)
	t.Logf("%s (%s), %.1fs; final counters:\n%s", c.name, c.layout, time.Since(start).Seconds(), final.table())
	t.Logf("guest eth0: %s", res.statsLine)
	for _, p := range live.problems() {
		t.Errorf("zcnet stats after the guest powered off: %s", p)
	}
	for _, p := range final.problems() {
		t.Errorf("zcnet's final summary: %s", p)
	}
	if n, ok := final.num("traffic", "iommu_faults"); !ok || n != 0 {
		t.Errorf("IOMMU faults %d (reported: %v), want 0", n, ok)
	}
	if delivered, _ := final.num("ports", 0, "rx_packets"); uint64(res.stats["rx_packets"]) > delivered {
		t.Errorf("the guest counted %d received packets, zcnet delivered %d", res.stats["rx_packets"], delivered)
	}
	for _, k := range []string{"rx_errors", "rx_dropped", "rx_length_errors", "rx_over_errors", "rx_crc_errors",
		"rx_frame_errors", "rx_fifo_errors", "rx_missed_errors", "tx_errors", "tx_dropped"} {
		v, ok := res.stats[k]
		switch {
		case !ok:
			t.Errorf("the guest did not report eth0 statistic %s", k)
		case v != 0:
			t.Errorf("guest eth0 %s = %d, want 0", k, v)
		}
	}
	for _, b := range c.want {
		if !res.features.has(b) {
			t.Errorf("the guest did not negotiate %s (case %s: %s)", featureNames[b], c.name, c.layout)
		}
	}
	for _, b := range c.notWant {
		if res.features.has(b) {
			t.Errorf("the guest negotiated %s, which case %s turns off", featureNames[b], c.name)
		}
	}
}

// --- zcnet in a namespace ----------------------------------------------------

// rig is a network namespace with zcnet sim running in it, its TAP
// addressed as nsAddr.
type rig struct {
	s          *setup
	ns, out    string
	sock, tele string
	zc         *lib.Process
	zcOut      bytes.Buffer
}

func startRig(t *testing.T, s *setup, out, ns string) *rig {
	r := &rig{s: s, ns: ns, out: out}
	dir := t.TempDir()
	r.sock, r.tele = filepath.Join(dir, "vhost.sock"), filepath.Join(dir, "telemetry.sock")

	lib.Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if b, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, b)
		}
	})
	r.nsRun(t, "ip", "link", "set", "lo", "up")
	// No IPv6 on the TAP zcnet creates: the test counts every frame, and
	// router solicitations and MLD reports are frames it did not make.
	r.nsRun(t, "sh", "-c", "echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 && echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6")

	r.zc = lib.StartProcess(t, "zcnet", filepath.Join(out, "zcnet.log"), &r.zcOut, "ip", "netns", "exec", ns, s.zcnet, "sim",
		"--tap", tapName, "--vhost", r.sock, "--telemetry", r.tele, "--stats-period", "0", "--json")
	// The TAP, the vhost-user socket and the telemetry socket appear once
	// zcnet is up.
	r.zc.WaitReady(t, 20*time.Second, func() (bool, string) {
		tapOK := exec.Command("ip", "netns", "exec", ns, "ip", "link", "show", tapName).Run() == nil
		_, sockErr := os.Stat(r.sock)
		_, teleErr := os.Stat(r.tele)
		return tapOK && sockErr == nil && teleErr == nil,
			fmt.Sprintf("TAP %s in %s: %v, vhost socket: %v, telemetry socket: %v", tapName, ns, tapOK, sockErr, teleErr)
	})
	r.nsRun(t, "ip", "addr", "add", nsAddr+"/24", "dev", tapName)
	r.nsRun(t, "ip", "link", "set", tapName, "up")
	return r
}

// nsRun runs a command in the namespace and fails the test if it fails.
func (r *rig) nsRun(t *testing.T, args ...string) string {
	t.Helper()
	return lib.Run(t, append([]string{"ip", "netns", "exec", r.ns}, args...)...)
}

// snapshot reads zcnet's counters through `zcnet stats --json`.
func (r *rig) snapshot(t *testing.T) counters {
	t.Helper()
	c, err := r.trySnapshot()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *rig) trySnapshot() (counters, error) {
	cmd := exec.Command(r.s.zcnet, "stats", "--json", "--socket", r.tele)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return counters{}, fmt.Errorf("zcnet stats --json --socket %s: %v: %s", r.tele, err, stderr.String())
	}
	return parseCounters(b, "zcnet stats")
}

// settle polls zcnet's counters until two reads a second apart are equal
// and balance, or 15 s have passed: frames may still be on their way
// through the NIC and the engine. It returns the last read.
func (r *rig) settle(t *testing.T, when string) counters {
	t.Helper()
	prev := r.snapshot(t)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		time.Sleep(time.Second)
		cur := r.snapshot(t)
		if cur.sameFrames(prev) && len(cur.problems()) == 0 {
			return cur
		}
		prev = cur
	}
	t.Logf("zcnet's counters %s did not settle balanced within 15 s", when)
	return prev
}

// stop ends zcnet with SIGINT, as an operator would, and returns the JSON
// summary it prints. zcnet must exit 0: it fails on an IOMMU fault.
func (r *rig) stop(t *testing.T) counters {
	t.Helper()
	r.zc.Interrupt(t, 30*time.Second)
	_ = os.WriteFile(filepath.Join(r.out, "summary.json"), r.zcOut.Bytes(), 0o644)
	c, err := parseCounters(r.zcOut.Bytes(), "zcnet sim --json summary")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// --- the namespace's TCP ends ---------------------------------------------------

// peer is busybox nc in the namespace.
type peer struct {
	cmd  *exec.Cmd
	hold io.WriteCloser
	done chan error
	err  error
	over bool
}

// listen starts busybox nc -l on port in the namespace. With from set it
// sends that file; otherwise it writes what it receives to to (its
// standard input stays open: busybox nc quits at the end of it).
func (r *rig) listen(t *testing.T, port int, from, to string) *peer {
	t.Helper()
	p := &peer{done: make(chan error, 1)}
	p.cmd = exec.Command("ip", "netns", "exec", r.ns, r.s.busybox, "nc", "-l", "-p", strconv.Itoa(port))
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if from != "" {
		f, err := os.Open(from)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		p.cmd.Stdin = f
	} else {
		hold, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.hold = hold
		f, err := os.Create(to)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		p.cmd.Stdout = f
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("busybox nc -l -p %d in %s: %v", port, r.ns, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(p.kill)
	return p
}

func (p *peer) kill() {
	if !p.over {
		_ = p.cmd.Process.Kill()
		p.wait(5 * time.Second)
	}
	if p.hold != nil {
		p.hold.Close()
	}
}

// wait waits for nc to exit; false if it did not within d.
func (p *peer) wait(d time.Duration) bool {
	if p.over {
		return true
	}
	select {
	case p.err = <-p.done:
		p.over = true
		return true
	case <-time.After(d):
		return false
	}
}

// --- the guest ----------------------------------------------------------------

// guest is one QEMU process and its serial console.
type guest struct{ *lib.Console }

func bootGuest(t *testing.T, s *setup, r *rig, c tcase, mode, out string) *guest {
	mem := fmt.Sprintf("memory-backend-memfd,id=mem,size=%d,share=on", guestRAM)
	if c.hugetlbfs {
		mem = fmt.Sprintf("memory-backend-file,id=mem,size=%d,mem-path=/dev/hugepages,share=on", guestRAM)
	}
	args := []string{
		"-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
		"-object", mem, "-numa", "node,memdev=mem",
		"-chardev", "socket,id=chr0,path=" + r.sock,
		"-netdev", "vhost-user,id=net0,chardev=chr0",
		// vectors=0: QEMU 7.2 under TCG crashes with MSI-X and vhost-user;
		// romfile= skips the iPXE ROM, which only slows the boot.
		"-device", "virtio-net-pci,netdev=net0,vectors=0,romfile=,mac=" + guestMAC + c.props,
		"-kernel", s.kernel, "-initrd", s.initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet ZCQ_MIB=%d ZCQ_MODE=%s", s.mib, mode),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
	}
	return &guest{lib.StartConsole(t, "guest", s.qemu, args, out, 8192)}
}

// await returns the rest of the first console line starting with prefix,
// failing the test if none comes within d, or if the guest says its
// set-up failed or reaches its final marker first.
func (g *guest) await(t *testing.T, prefix, what string, d time.Duration) string {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-g.Lines:
			switch {
			case !ok:
				g.Fatalf(t, "QEMU's console closed before the guest %s (no %q line)", what, prefix)
			case strings.HasPrefix(line, prefix):
				return strings.TrimPrefix(line, prefix)
			case strings.HasPrefix(line, setupErr), strings.HasPrefix(line, marker):
				g.Fatalf(t, "the guest stopped before it %s: %s", what, line)
			}
		case <-timer.C:
			g.Fatalf(t, "the guest has not %s after %v (no %q line)", what, d, prefix)
		}
	}
}

// result is what a full guest run reported.
type result struct {
	features            features
	sentSum             string // SHA-256 of the file the guest sends
	pingHost, pingGuest int
	transfer            time.Duration
	stats               map[string]int64
	statsLine           string
}

// startGuest boots a guest and takes it through ping both ways up to the
// host's go.
func startGuest(t *testing.T, s *setup, r *rig, c tcase, mode, out string) (*guest, result) {
	var res result
	g := bootGuest(t, s, r, c, mode, out)
	res.features = features(g.await(t, "ZCQ-FEATURES ", "brought eth0 up", 150*time.Second))
	if mode == "full" {
		res.sentSum = g.await(t, "ZCQ-SENT-SHA256 ", "made its data", 60*time.Second)
	}
	ping := g.await(t, "ZCQ-PING-HOST received=", "pinged the namespace", 60*time.Second)
	res.pingHost, _ = strconv.Atoi(ping)
	if res.pingHost != 3 {
		g.Fatalf(t, "the guest's ping to the namespace (ARP from the guest's own MAC) got %q of 3 replies", ping)
	}
	_ = g.await(t, "ZCQ-UP", "was ready to be pinged", 30*time.Second)
	pout, err := exec.Command("ip", "netns", "exec", r.ns, "ping", "-c", "3", "-W", "10", guestAddr).CombinedOutput()
	if m := regexp.MustCompile(`(\d+) received`).FindSubmatch(pout); m != nil {
		res.pingGuest, _ = strconv.Atoi(string(m[1]))
	}
	if err != nil || res.pingGuest != 3 {
		g.Fatalf(t, "ping from the namespace to the guest (ARP for %s from the namespace): %v\n%s", guestAddr, err, pout)
	}
	// Tell the guest to go on: a TCP connection from the namespace. The
	// guest's nc may not be listening yet; retry.
	var goErr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		cmd := exec.Command("ip", "netns", "exec", r.ns, s.busybox, "nc", "-w", "10", guestAddr, strconv.Itoa(goPort))
		cmd.Stdin = strings.NewReader("go\n")
		var b []byte
		if b, goErr = cmd.CombinedOutput(); goErr == nil {
			break
		}
		goErr = fmt.Errorf("%v: %s", goErr, b)
	}
	if goErr != nil {
		g.Fatalf(t, "connecting from the namespace to the guest's port %d: %v", goPort, goErr)
	}
	return g, res
}

// runGuest boots a guest that pings both ways, sends its file to the
// namespace and receives sendFile, then checks both checksums.
func runGuest(t *testing.T, s *setup, r *rig, c tcase, out, sendFile, sendSum string) result {
	recvFile := filepath.Join(out, "from-guest.bin")
	recv := r.listen(t, recvPort, "", recvFile)
	send := r.listen(t, sendPort, sendFile, "")
	g, res := startGuest(t, s, r, c, "full", filepath.Join(out, "guest"))
	began := time.Now()
	_ = g.await(t, "ZCQ-TX-DONE", "sent its file", 120*time.Second)
	got := g.await(t, "ZCQ-RECV-SHA256 ", "received the namespace's file", 120*time.Second)
	res.transfer = time.Since(began)
	res.statsLine = g.await(t, "ZCQ-STATS ", "reported eth0's statistics", 30*time.Second)
	rc := g.await(t, marker, "finished", 30*time.Second)
	if rc != "0" {
		g.Fatalf(t, "the guest finished with rc=%s", rc)
	}
	if !g.Wait(30 * time.Second) {
		t.Errorf("QEMU did not exit 30 s after the guest powered off")
	}
	g.Save()

	if !recv.wait(20 * time.Second) {
		t.Errorf("the namespace's receiving nc did not see the end of the guest's stream within 20 s")
	}
	if !send.wait(20 * time.Second) {
		t.Errorf("the namespace's sending nc did not finish within 20 s")
	}
	if sum, n := fileSum(t, recvFile); sum != res.sentSum || n != int64(s.mib<<20) {
		t.Errorf("guest → namespace: the namespace received %d bytes with SHA-256 %s; the guest sent %d bytes with %s",
			n, sum, s.mib<<20, res.sentSum)
	}
	f := strings.Fields(got)
	if len(f) != 2 || f[0] != sendSum || f[1] != fmt.Sprintf("bytes=%d", s.mib<<20) {
		t.Errorf("namespace → guest: the guest received %q; the namespace sent bytes=%d with SHA-256 %s", got, s.mib<<20, sendSum)
	}
	res.stats = map[string]int64{}
	for _, kv := range strings.Fields(res.statsLine) {
		k, v, _ := strings.Cut(kv, "=")
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			res.stats[k] = n
		}
	}
	return res
}

// streamAndKill boots a guest that streams both ways without end, and
// kills its QEMU with SIGKILL once both directions are moving.
func streamAndKill(t *testing.T, s *setup, r *rig, c tcase, out string) {
	recvFile := filepath.Join(out, "stream-from-guest.bin")
	recv := r.listen(t, recvPort, "", recvFile)
	send := r.listen(t, sendPort, "/dev/zero", "")
	g, _ := startGuest(t, s, r, c, "stream", filepath.Join(out, "guest-killed"))
	_ = g.await(t, "ZCQ-STREAMING", "started streaming", 30*time.Second)
	before := r.snapshot(t)
	// Both ways moving: a MiB from the guest, a MiB's worth of frames to it.
	var fromGuest int64
	var toGuest uint64
	deadline := time.Now().Add(60 * time.Second)
	for {
		if fi, err := os.Stat(recvFile); err == nil {
			fromGuest = fi.Size()
		}
		now := r.snapshot(t)
		a, _ := before.num("ports", 0, "rx_bytes")
		b, _ := now.num("ports", 0, "rx_bytes")
		toGuest = b - a
		if fromGuest >= 1<<20 && toGuest >= 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			g.Fatalf(t, "after 60 s of streaming the namespace got %d bytes from the guest and zcnet delivered %d bytes to it; want a MiB each way before the kill", fromGuest, toGuest)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("killing QEMU (SIGKILL) mid-transfer: %d bytes from the guest so far, %d delivered to it", fromGuest, toGuest)
	_ = g.Signal(syscall.SIGKILL)
	if !g.Wait(10 * time.Second) {
		t.Fatalf("QEMU did not die 10 s after SIGKILL")
	}
	g.Save()
	// The namespace's ends of the dead connections.
	recv.kill()
	send.kill()
	// zcnet must have survived the front end's death.
	select {
	case <-r.zc.Exited():
		t.Fatalf("zcnet exited (%v) when QEMU was killed; its log:\n%s", r.zc.Err(), r.zc.LogTail(30))
	case <-time.After(2 * time.Second):
	}
}

// --- zcnet's counters ---------------------------------------------------------

// counters is one zcnet snapshot, as JSON, read by path so that the test
// names each field it needs and fails saying which one is missing.
type counters struct {
	m       map[string]any
	missing []string
}

func parseCounters(b []byte, what string) (counters, error) {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return counters{}, fmt.Errorf("%s: not JSON (%v): %s", what, err, b)
	}
	return counters{m: m}, nil
}

// lookup returns the value at path (map keys and slice indexes).
func (c *counters) lookup(path []any) (any, bool) {
	var v any = c.m
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[k]; !ok {
				return nil, false
			}
		case int:
			s, ok := v.([]any)
			if !ok || k >= len(s) {
				return nil, false
			}
			v = s[k]
		}
	}
	return v, true
}

// num returns the number at path.
func (c *counters) num(path ...any) (uint64, bool) {
	v, _ := c.lookup(path)
	f, ok := v.(float64)
	return uint64(f), ok
}

// must is num, noting a missing field.
func (c *counters) must(path ...any) uint64 {
	n, ok := c.num(path...)
	if !ok {
		c.missing = append(c.missing, pathString(path))
	}
	return n
}

func pathString(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch k := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(k)
		case int:
			fmt.Fprintf(&b, "[%d]", k)
		}
	}
	return b.String()
}

// causes returns a map of counters under path, keyed by name.
func (c *counters) causes(path ...any) map[string]uint64 {
	out := map[string]uint64{}
	v, _ := c.lookup(path)
	m, ok := v.(map[string]any)
	if !ok {
		c.missing = append(c.missing, pathString(path))
		return out
	}
	for k, x := range m {
		if f, ok := x.(float64); ok {
			out[k] = uint64(f)
		}
	}
	return out
}

// The NIC's own receive discards, before a frame counts as received
// (GPRC): nics[0].<key>. rx_length_errors (RLEC) counts undersize and
// oversize frames a second time and is left out; rx_filtered is the
// simulated NIC's, which the 82599 cannot count.
var nicEarlyDrops = []string{"rx_crc_errors", "rx_undersize", "rx_fragments", "rx_oversize", "rx_jabbers", "rx_filtered"}

// frames is the receive path's accounting, from the wire to the guest.
type frames struct {
	wireIn                  uint64 // frames the namespace's kernel wrote into the TAP
	notReady                uint64 // link down or receiver off
	early                   map[string]uint64
	nicRx                   uint64 // GPRC
	missed, noDesc          uint64
	delivered               uint64 // to the guest
	zcRx, cpRx, zcTx, cpTx  uint64
	engineRx                map[string]uint64
	engineTx                map[string]uint64
	copies                  map[string]uint64
	guestTx, nicTx, wireOut uint64
	iommu, restarts         uint64
}

func (c *counters) frames() frames {
	c.missing = nil
	f := frames{early: map[string]uint64{}, engineRx: map[string]uint64{}, engineTx: map[string]uint64{}}
	f.wireIn = c.must("traffic", "tap_from_kernel")
	f.wireOut = c.must("traffic", "tap_to_kernel")
	f.notReady = c.must("traffic", "sim_rx_not_ready")
	for _, k := range nicEarlyDrops {
		f.early[k] = c.must("nics", 0, k)
	}
	f.nicRx = c.must("nics", 0, "rx_packets")
	f.nicTx = c.must("nics", 0, "tx_packets")
	f.missed = c.must("nics", 0, "rx_missed")
	f.noDesc = c.must("nics", 0, "rx_no_descriptor")
	f.delivered = c.must("ports", 0, "rx_packets")
	f.guestTx = c.must("ports", 0, "tx_packets")
	f.zcRx, f.zcTx = c.must("ports", 0, "zero_copy", "rx"), c.must("ports", 0, "zero_copy", "tx")
	f.cpRx, f.cpTx = c.must("ports", 0, "copied", "rx"), c.must("ports", 0, "copied", "tx")
	f.restarts = c.must("ports", 0, "restarts")
	f.iommu = c.must("traffic", "iommu_faults")
	for k, v := range c.causes("ports", 0, "drops") {
		if strings.HasPrefix(k, "rx_") {
			f.engineRx[k] = v
		} else {
			f.engineTx[k] = v
		}
	}
	f.copies = c.causes("ports", 0, "copy_reasons")
	return f
}

func sum(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// sameFrames says whether the receive and transmit counts are unchanged.
func (c counters) sameFrames(o counters) bool {
	a, b := c.frames(), o.frames()
	return a.wireIn == b.wireIn && a.nicRx == b.nicRx && a.delivered == b.delivered && a.wireOut == b.wireOut &&
		sum(a.engineRx) == sum(b.engineRx) && a.noDesc == b.noDesc && a.guestTx == b.guestTx
}

// problems lists what is wrong with a snapshot: missing fields, the
// accounting not balancing, copies for a reason other than a missing
// guest buffer, nothing moved zero-copy, IOMMU faults.
func (c counters) problems() []string {
	f := c.frames()
	var p []string
	for _, m := range c.missing {
		p = append(p, fmt.Sprintf("the snapshot has no %s: a drop or count the operator cannot see", m))
	}
	if in := f.nicRx + sum(f.early) + f.notReady; f.wireIn != in {
		p = append(p, fmt.Sprintf("wire → NIC does not balance: the TAP wrote %d frames to the NIC, which received %d and dropped %d (%s) = %d",
			f.wireIn, f.nicRx, sum(f.early)+f.notReady, causeList(withNotReady(f)), in))
	}
	if out := f.delivered + sum(f.engineRx) + f.missed + f.noDesc; f.nicRx != out {
		p = append(p, fmt.Sprintf("NIC → guest does not balance: the NIC received %d frames; delivered to the guest %d + engine drops %d (%s) + missed %d + no descriptor %d = %d",
			f.nicRx, f.delivered, sum(f.engineRx), causeList(f.engineRx), f.missed, f.noDesc, out))
	}
	if f.nicTx != f.wireOut {
		p = append(p, fmt.Sprintf("NIC → wire: the NIC sent %d frames, the TAP handed %d to the kernel", f.nicTx, f.wireOut))
	}
	for k, v := range f.copies {
		if v != 0 && !allowedCopies[k] {
			p = append(p, fmt.Sprintf("%d frames copied for reason %q: a buffer layout the guest posts was not used zero-copy", v, k))
		}
	}
	if f.zcRx == 0 || f.zcTx == 0 {
		p = append(p, fmt.Sprintf("zero-copy frames rx %d tx %d: want both > 0", f.zcRx, f.zcTx))
	}
	if f.iommu != 0 {
		p = append(p, fmt.Sprintf("%d IOMMU faults", f.iommu))
	}
	return p
}

func withNotReady(f frames) map[string]uint64 {
	m := map[string]uint64{"rx_not_ready": f.notReady}
	for k, v := range f.early {
		m[k] = v
	}
	return m
}

func causeList(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v != 0 {
			keys = append(keys, fmt.Sprintf("%s %d", k, v))
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return "none"
	}
	return strings.Join(keys, ", ")
}

// table is the key counters, for the test log.
func (c counters) table() string {
	f := c.frames()
	var b strings.Builder
	w := func(k string, format string, args ...any) {
		fmt.Fprintf(&b, "  %-34s %s\n", k, fmt.Sprintf(format, args...))
	}
	w("wire → NIC (TAP from the kernel)", "%d", f.wireIn)
	w("NIC dropped before GPRC", "%d (%s)", sum(f.early)+f.notReady, causeList(withNotReady(f)))
	w("NIC received (GPRC)", "%d", f.nicRx)
	w("NIC missed / no descriptor", "%d / %d", f.missed, f.noDesc)
	w("engine RX drops", "%d (%s)", sum(f.engineRx), causeList(f.engineRx))
	w("delivered to the guest", "%d (zero-copy %d, copied %d)", f.delivered, f.zcRx, f.cpRx)
	w("from the guest", "%d (zero-copy %d, copied %d)", f.guestTx, f.zcTx, f.cpTx)
	w("engine TX drops", "%d (%s)", sum(f.engineTx), causeList(f.engineTx))
	w("NIC sent / TAP to the kernel", "%d / %d", f.nicTx, f.wireOut)
	w("copy reasons", "%s", causeList(f.copies))
	w("IOMMU faults / port restarts", "%d / %d", f.iommu, f.restarts)
	if len(c.missing) > 0 {
		w("missing from the snapshot", "%s", strings.Join(c.missing, ", "))
	}
	return strings.TrimRight(b.String(), "\n")
}

// --- helpers --------------------------------------------------------------------

// features is the guest's virtio features file: one '0' or '1' per bit.
type features string

func (f features) has(bit int) bool { return bit < len(f) && f[bit] == '1' }

func featureList(f features) string {
	var on []string
	bits := make([]int, 0, len(featureNames))
	for b := range featureNames {
		bits = append(bits, b)
	}
	sort.Ints(bits)
	for _, b := range bits {
		if f.has(b) {
			on = append(on, featureNames[b])
		}
	}
	return strings.Join(on, " ")
}

func writeRandom(t *testing.T, path string, n int) string {
	t.Helper()
	src, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), src, int64(n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSum(t *testing.T, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

func hugePagesFree(t *testing.T) int {
	b, err := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
	if err != nil {
		t.Fatalf("reading the free 2 MiB hugepages: %v", err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}
