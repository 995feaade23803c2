//go:build qemuvhost

package qemuvhost_test

import (
	"bufio"
	"bytes"
	"context"
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

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/test/lib"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

const (
	guestRAM   = 512 << 20
	guestMAC   = "52:54:00:12:34:56"
	marker     = "ZCNET-QEMU-VHOST rc="
	statsLine  = "ZCNET-QEMU-VHOST-STATS "
	linkUpLine = "ZCNET-QEMU-VHOST-LINK-UP "
)

// qemuEmulated are the virtio-net features QEMU's device model implements
// itself for a vhost-user netdev (config space and control queue).
const qemuEmulated = vhost.NetFCtrlGuestOffl | vhost.NetFMAC | vhost.NetFStatus | vhost.NetFCtrlVQ |
	vhost.NetFCtrlRx | vhost.NetFCtrlVLAN | vhost.NetFGuestAnnounce | vhost.NetFCtrlMACAddr | vhost.NetFMQ

// variant is one guest configuration: QEMU device properties, and what
// the guest sends and must see.
type variant struct {
	name string
	// props are extra virtio-net-pci properties.
	props string
	// plain, csum and tso are the guest program's frame counts.
	plain, csum, tso int
	// want and notWant are feature bits that must (not) be negotiated.
	want, notWant uint64
	// partial: the guest accepts partial checksums (GUEST_CSUM), so the
	// back end passes NEEDS_CSUM through; otherwise it must complete them.
	partial bool
}

var variants = []variant{
	{
		// What the Linux driver negotiates when offered everything the
		// back end offers by default: merged RX buffers, checksum and TSO
		// offload in both directions, event index, indirect descriptors.
		name:  "offloads",
		plain: 1000, csum: 200, tso: 20,
		want: vhost.FVersion1 | vhost.NetFMrgRxbuf | vhost.NetFCsum | vhost.NetFGuestCsum |
			vhost.NetFHostTSO4 | vhost.NetFGuestTSO4 | vhost.FEventIdx | vhost.FIndirectDesc |
			vhost.FProtocolFeatures,
		partial: true,
	},
	{
		// A guest that takes no offloads and no merged buffers: the back
		// end must finish the checksums the guest's TX left partial, and
		// fit every frame into a single RX buffer.
		name:  "no-guest-offloads",
		props: ",mrg_rxbuf=off,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off",
		plain: 1000, csum: 200, tso: 0,
		want:    vhost.FVersion1 | vhost.NetFCsum | vhost.FProtocolFeatures,
		notWant: vhost.NetFMrgRxbuf | vhost.NetFGuestCsum | vhost.NetFGuestTSO4 | vhost.NetFGuestTSO6,
	},
}

// env returns a variable run.sh sets, failing the test if it is missing.
func env(t *testing.T, name string) string {
	t.Helper()
	return lib.Env(t, name, "test/qemu-vhost/run.sh", "the guest kernel and initramfs")
}

func TestQEMUVhostUser(t *testing.T) {
	kernel := env(t, "ZCNET_QV_KERNEL")
	initrd := env(t, "ZCNET_QV_INITRD")
	work := env(t, "ZCNET_QV_WORK")
	timeout := 75 * time.Second
	if s := os.Getenv("ZCNET_QV_TIMEOUT"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("ZCNET_QV_TIMEOUT=%q: want a number of seconds", s)
		}
		timeout = time.Duration(n) * time.Second
	}
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("guest file missing: %v", err)
		}
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): %v", err)
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			runVariant(t, v, qemu, kernel, initrd, filepath.Join(work, v.name), timeout)
		})
	}
}

// memRecorder is the device's MemoryHook: it records the regions the
// front end's memory table mapped.
type memRecorder struct {
	mu       sync.Mutex
	mapped   []vhost.Region
	unmapped int
}

func (m *memRecorder) MapRegion(r vhost.Region) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mapped = append(m.mapped, r)
	return nil
}

func (m *memRecorder) UnmapRegion(vhost.Region) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unmapped++
	return nil
}

func (m *memRecorder) regions() []vhost.Region {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]vhost.Region(nil), m.mapped...)
}

// session is what the back end looked like once the guest's link was up.
type session struct {
	features    uint64
	status      uint8
	rx, tx      bool // queue pair 0 running
	broken      bool
	rxCount     vhost.QueueCounters
	txCount     vhost.QueueCounters
	sampledLink bool
}

func sample(d *vhost.Device) session {
	s := session{status: d.Status(), sampledLink: true}
	d.LockDataPath()
	defer d.UnlockDataPath()
	s.features = d.Features()
	if q := d.RxQueue(0); q != nil {
		s.rx, s.broken, s.rxCount = true, s.broken || q.Broken(), q.Counters()
	}
	if q := d.TxQueue(0); q != nil {
		s.tx, s.broken, s.txCount = true, s.broken || q.Broken(), q.Counters()
	}
	return s
}

func runVariant(t *testing.T, v variant, qemu, kernel, initrd, out string, timeout time.Duration) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	// Back-end log: every entry to a file, and to an observer the
	// assertions read.
	logFile, err := os.Create(filepath.Join(out, "backend.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	obsCore, logs := observer.New(zapcore.DebugLevel)
	fileCore := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(logFile), zapcore.DebugLevel)
	logger := zap.New(zapcore.NewTee(obsCore, fileCore))
	defer func() { _ = logger.Sync() }()

	mac, _ := net.ParseMAC(guestMAC)
	hook := &memRecorder{}
	d, err := vhost.NewDevice(vhost.Config{Name: "qemu-" + v.name, MAC: mac, Hook: hook, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	l, err := vhost.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- vhost.ServeListener(ctx, l, d) }()

	// The loopback on a pinned lcore, on the last CPU we may use; QEMU's
	// TCG thread gets the others. IdleYield, because with two CPUs a
	// spinning lcore would leave the test's own goroutines one P.
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	loop := vhosttest.NewLoopback(d)
	runner, err := pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield},
		[]pollmode.LcoreConfig{{ID: 1, CPU: cpus[len(cpus)-1], Tasks: []pollmode.Task{loop}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := runner.Stop(); err != nil {
			t.Errorf("lcore: %v", err)
		}
	}()

	args := []string{
		"-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M",
		"-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%d,share=on", guestRAM),
		"-numa", "node,memdev=mem",
		"-chardev", "socket,id=chr0,path=" + sock,
		"-netdev", "vhost-user,id=net0,chardev=chr0",
		// vectors=0: QEMU 7.2 under TCG crashes with MSI-X and vhost-user;
		// romfile= skips the iPXE ROM, which only slows the boot.
		"-device", "virtio-net-pci,netdev=net0,vectors=0,romfile=,mac=" + guestMAC + v.props,
		"-kernel", kernel, "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 quiet ZCNET_N=%d ZCNET_CSUM=%d ZCNET_TSO=%d", v.plain, v.csum, v.tso),
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
	}
	t.Logf("%s %s", qemu, strings.Join(args, " "))
	cmd := exec.Command(qemu, args...)
	// QEMU dies with the test process, and is killed by the deferred
	// cleanup whatever happens here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	exited := make(chan error, 1)
	var console bytes.Buffer
	var sess, atEnd session
	var stats, result string
	var linkUpAt, resultAt time.Duration
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- strings.TrimRight(sc.Text(), "\r")
		}
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	killed := false
	kill := func() {
		if !killed {
			killed = true
			_ = cmd.Process.Kill()
		}
	}
	defer kill()
	consoleDone := false
	for !consoleDone {
		select {
		case line, ok := <-lines:
			if !ok {
				consoleDone = true
				break
			}
			console.WriteString(line + "\n")
			switch {
			case strings.HasPrefix(line, linkUpLine):
				sess, linkUpAt = sample(d), time.Since(start)
			case strings.HasPrefix(line, statsLine):
				stats = line
			case strings.HasPrefix(line, marker):
				result, resultAt = line, time.Since(start)
				atEnd = sample(d)
			}
		case <-deadline.C:
			t.Errorf("QEMU still running after %v: killed", timeout)
			kill()
		}
	}
	go func() { exited <- cmd.Wait() }()
	var qemuErr error
	select {
	case qemuErr = <-exited:
	case <-time.After(10 * time.Second):
		kill()
		qemuErr = fmt.Errorf("QEMU did not exit 10 s after its console closed: killed (%v)", <-exited)
	}
	total := time.Since(start)
	_ = os.WriteFile(filepath.Join(out, "console.log"), console.Bytes(), 0o644)
	_ = os.WriteFile(filepath.Join(out, "qemu-stderr.log"), stderr.Bytes(), 0o644)
	cancel()
	if err := <-served; err != nil {
		t.Errorf("back end: %v", err)
	}
	t.Logf("timing: link up %.1fs, result %.1fs, QEMU exited %.1fs", linkUpAt.Seconds(), resultAt.Seconds(), total.Seconds())
	failed := func() {
		t.Logf("guest console (%s):\n%s", filepath.Join(out, "console.log"), lib.Tail(console.String(), 60))
		t.Logf("QEMU stderr:\n%s", stderr.String())
		t.Logf("back-end log: %s", filepath.Join(out, "backend.log"))
	}
	defer func() {
		if t.Failed() {
			failed()
		}
	}()

	if qemuErr != nil && !killed {
		t.Errorf("QEMU: %v", qemuErr)
	}
	if s := stderr.String(); strings.Contains(s, "vhost") || strings.Contains(strings.ToLower(s), "error") {
		t.Errorf("QEMU reported a problem on stderr: %s", s)
	}

	// The guest's verdict.
	if result == "" {
		t.Fatalf("the guest printed no %q line", marker)
	}
	if !sess.sampledLink {
		t.Errorf("the guest's link never came up")
	}
	if rc := strings.TrimPrefix(result, marker); rc != "0" {
		t.Errorf("guest program failed: %s", result)
	}
	st := parseStats(t, stats)
	t.Logf("guest: %s", stats)
	wantSent := v.plain + v.csum + v.tso
	for k, want := range map[string]int{"sent": wantSent, "received": wantSent, "plain": v.plain, "csum": v.csum, "tso": v.tso} {
		if st[k] != want {
			t.Errorf("guest %s=%d, want %d", k, st[k], want)
		}
	}
	if v.partial && (st["csum_partial"] != v.csum+v.tso || st["csum_complete"] != 0) {
		t.Errorf("guest with GUEST_CSUM: %d echoes kept NEEDS_CSUM, %d were completed; want all %d partial",
			st["csum_partial"], st["csum_complete"], v.csum+v.tso)
	}
	if !v.partial && (st["csum_complete"] != v.csum || st["csum_partial"] != 0) {
		t.Errorf("guest without GUEST_CSUM: %d echoes completed by the back end, %d still partial; want all %d completed",
			st["csum_complete"], st["csum_partial"], v.csum)
	}

	// What the back end saw.
	t.Logf("negotiated features %#x (guest reports %s)", sess.features, statsField(stats, "features"))
	if missing := v.want &^ sess.features; missing != 0 {
		t.Errorf("features %#x negotiated; missing %#x", sess.features, missing)
	}
	if extra := v.notWant & sess.features; extra != 0 {
		t.Errorf("features %#x negotiated; %#x should not be", sess.features, extra)
	}
	if g, err := strconv.ParseUint(statsField(stats, "features"), 0, 64); err != nil {
		t.Errorf("guest features %q: %v", statsField(stats, "features"), err)
	} else {
		// QEMU gives the guest the back end's data-path features (less
		// the vhost-user-only bit 30) plus the control-plane ones it
		// emulates itself; it never passes those to a vhost-user back end.
		backend := sess.features &^ vhost.FProtocolFeatures
		if missing := backend &^ g; missing != 0 {
			t.Errorf("guest driver has features %#x, without the back end's %#x", g, missing)
		}
		if extra := g &^ backend &^ qemuEmulated; extra != 0 {
			t.Errorf("guest driver has features %#x the back end did not negotiate", extra)
		}
	}
	if want := uint8(vhost.StatusFeaturesOK | vhost.StatusDriverOK); sess.status&want != want || sess.status&vhost.StatusNeedsReset != 0 {
		t.Errorf("device status %#x at link up; want FEATURES_OK and DRIVER_OK, without NEEDS_RESET", sess.status)
	}
	if !sess.rx || !sess.tx {
		t.Errorf("queue pair 0 not running at link up (rx %v, tx %v)", sess.rx, sess.tx)
	}
	if sess.broken || atEnd.broken {
		t.Errorf("a virtqueue broke")
	}
	if atEnd.txCount.Popped < uint64(wantSent) {
		t.Errorf("TX queue popped %d chains, the guest sent %d frames", atEnd.txCount.Popped, wantSent)
	}

	regions := hook.regions()
	var total64 uint64
	for _, r := range regions {
		t.Logf("memory region: GPA %#x size %#x UVA %#x offset %#x", r.GuestPhysAddr, r.Size, r.UserAddr, r.MmapOffset)
		total64 += r.Size
	}
	// All guest RAM is in the memfd; QEMU leaves out at most the legacy
	// VGA/BIOS holes below 1 MiB.
	if len(regions) == 0 || total64 > guestRAM || total64 < guestRAM-(1<<20) {
		t.Errorf("memory table mapped %d regions, %d bytes in all; want the guest's %d MiB memfd", len(regions), total64, guestRAM>>20)
	}

	seq := requests(logs)
	t.Logf("vhost-user requests: %s", strings.Join(seq, " "))
	for _, r := range []string{"GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER",
		"SET_FEATURES", "SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR",
		"SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ENABLE"} {
		if !contains(seq, r) {
			t.Errorf("the back end never got %s", r)
		}
	}
	// With CONFIGURE_MEM_SLOTS offered, QEMU 7.2 sends the guest's memory
	// region by region (ADD_MEM_REG) instead of a whole table.
	if !contains(seq, "SET_MEM_TABLE") && !contains(seq, "ADD_MEM_REG") {
		t.Errorf("the back end got neither SET_MEM_TABLE nor ADD_MEM_REG")
	}
	if i, j := index(seq, "SET_FEATURES"), index(seq, "SET_VRING_KICK"); i > j {
		t.Errorf("SET_VRING_KICK before SET_FEATURES")
	}
	started := map[int64]bool{}
	for _, e := range logs.FilterMessage("vring started").All() {
		if n, ok := e.ContextMap()["vring"].(int64); ok {
			started[n] = true
		}
	}
	if !started[0] || !started[1] {
		t.Errorf("vrings started: %v; want 0 (RX) and 1 (TX)", started)
	}
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		t.Errorf("back-end warning: %s %v", e.Message, e.ContextMap())
	}
	for _, e := range logs.FilterLevelExact(zapcore.ErrorLevel).All() {
		t.Errorf("back-end error: %s %v", e.Message, e.ContextMap())
	}
	lc := loop.Counters()
	t.Logf("loopback: %+v", lc)
	if lc.Frames < uint64(wantSent) {
		t.Errorf("the loopback returned %d frames; the guest sent %d, all to be returned", lc.Frames, wantSent)
	}
	if lc.Dropped != 0 {
		t.Errorf("the loopback dropped %d frames", lc.Dropped)
	}
}

func requests(logs *observer.ObservedLogs) []string {
	var seq []string
	for _, e := range logs.FilterMessage("vhost-user request").All() {
		if s, ok := e.ContextMap()["request"].(string); ok {
			seq = append(seq, s)
		}
	}
	return seq
}

func index(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return len(s)
}

func contains(s []string, v string) bool { return index(s, v) < len(s) }

// parseStats reads the guest's "ZCNET-QEMU-VHOST-STATS k=v ..." line.
func parseStats(t *testing.T, line string) map[string]int {
	t.Helper()
	if line == "" {
		t.Fatalf("the guest printed no %q line", strings.TrimSpace(statsLine))
	}
	m := map[string]int{}
	for _, f := range strings.Fields(strings.TrimPrefix(line, statsLine)) {
		k, v, _ := strings.Cut(f, "=")
		if n, err := strconv.Atoi(v); err == nil {
			m[k] = n
		}
	}
	return m
}

func statsField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v
		}
	}
	return ""
}
