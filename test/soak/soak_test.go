//go:build soak

package soak

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/pollmode"
)

// soakConfig is what the environment (make soak's variables) sets.
type soakConfig struct {
	duration time.Duration   // SOAK_DURATION: traffic start to the end checkpoint
	rate     float64         // SOAK_RATE: generator frames per second, per guest
	truncate bool            // SOAK_TRUNCATE: truncate guest memory mid-traffic
	seed     uint64          // SOAK_SEED: the chaos schedule's seed
	only     map[string]bool // SOAK_ACTIONS: the only actions taken (nil: all), to chase one finding
	bin      string          // ZCNET_BIN: the zcnet binary (else built here)
}

// defaultRate is where the simulator saturates on this project's 2-core
// VM with both zcnet processes and both guests sharing the CPUs: above it
// the extra frames are only dropped at the NIC (counted, but testing
// nothing more). SOAK_RATE changes it.
const defaultRate = 60000

// stopTimeout bounds how long zcnet may take to exit after SIGTERM.
const stopTimeout = 60 * time.Second

func loadConfig(t *testing.T) soakConfig {
	t.Helper()
	c := soakConfig{duration: 10 * time.Minute, rate: defaultRate, truncate: true, seed: uint64(time.Now().UnixNano())}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			t.Fatalf("SOAK_DURATION=%q: give a duration of at least 1m, e.g. 10m", v)
		}
		c.duration = d
	}
	if v := os.Getenv("SOAK_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 {
			t.Fatalf("SOAK_RATE=%q: give frames per second per guest, e.g. 60000", v)
		}
		c.rate = r
	}
	switch v := os.Getenv("SOAK_TRUNCATE"); v {
	case "", "1":
	case "0":
		c.truncate = false
	default:
		t.Fatalf("SOAK_TRUNCATE=%q: 1 (default) truncates guest memory mid-traffic, 0 does not", v)
	}
	if v := os.Getenv("SOAK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("SOAK_SEED=%q: give an unsigned integer", v)
		}
		c.seed = s
	}
	if v := os.Getenv("SOAK_ACTIONS"); v != "" {
		c.only = map[string]bool{}
		for _, k := range strings.Split(v, ",") {
			if !slices.ContainsFunc(actions, func(a action) bool { return a.kind == k }) {
				t.Fatalf("SOAK_ACTIONS: no action %q (the summary's action table lists them)", k)
			}
			c.only[k] = true
		}
	}
	c.bin = os.Getenv("ZCNET_BIN")
	return c
}

// zcnetBinary returns the binary to soak: ZCNET_BIN (make soak builds
// bin/zcnet), or one built from this tree.
func zcnetBinary(t *testing.T, c soakConfig) string {
	t.Helper()
	if c.bin != "" {
		if _, err := os.Stat(c.bin); err != nil {
			t.Fatalf("ZCNET_BIN: %v", err)
		}
		return c.bin
	}
	bin := filepath.Join(t.TempDir(), "zcnet")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/zcnet/zcnet/cmd/zcnet").CombinedOutput()
	if err != nil {
		t.Fatalf("building zcnet: %v\n%s", err, out)
	}
	return bin
}

// soakGuest is one guest with the zcnet process serving it.
type soakGuest struct {
	name  string
	zcnet *zcnetProcess
	drv   *guestDriver
}

// TestSoak is the soak: see the package comment.
func TestSoak(t *testing.T) {
	cfg := loadConfig(t)
	bin := zcnetBinary(t, cfg)
	// Past this, something hangs that every bounded wait missed: crash
	// with every goroutine's stack rather than wait for go test's timeout
	// (make soak runs with none, the duration being the user's).
	backstop := time.AfterFunc(cfg.duration+15*time.Minute, func() {
		panic(fmt.Sprintf("soak: still running %v after its %v duration", 15*time.Minute, cfg.duration))
	})
	defer backstop.Stop()
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "zcnet-soak-") // short: unix socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	fmt.Printf("soak: %v, %.0f frames/s per guest, memory truncation %s, seed %d (SOAK_SEED to repeat the schedule), zcnet %s\n",
		cfg.duration, cfg.rate, onOff(cfg.truncate), cfg.seed, bin)
	guests := []*soakGuest{{name: "guest-a"}, {name: "guest-b"}}
	for i, g := range guests {
		// One poll core each, on different CPUs when there are two.
		cpu := cpus[(len(cpus)-1-i+len(cpus))%len(cpus)]
		mac := fmt.Sprintf("52:54:00:5a:00:%02x", i+1)
		g.zcnet, err = startZcnet(bin, dir, "zcnet-"+g.name[len("guest-"):], cpu, mac, cfg.rate)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.zcnet.kill)
	}
	ready, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, g := range guests {
		if err := g.zcnet.waitReady(ready); err != nil {
			t.Fatal(err)
		}
		g.drv = newGuestDriver(g.name, g.zcnet, cfg.seed+uint64(len(g.name))*7919+uint64(g.name[len(g.name)-1]), cfg.truncate)
		g.drv.only = cfg.only
		if err := g.drv.start(); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		for _, g := range guests {
			g.zcnet.kill() // a guest still running sees zcnet go and stops
			select {
			case <-g.drv.done:
			case <-time.After(2 * reconnectTimeout):
			}
		}
	}()

	// Warm-up: chaos from the start, so that whatever zcnet allocates once
	// (pools, maps grown to their working size, goroutine stacks) has been
	// allocated before the first measurement.
	warmup := min(cfg.duration/5, 2*time.Minute)
	begin := time.Now()
	chaos(t, guests, true)
	watch(t, guests, begin, begin.Add(warmup))
	first := checkpoint(t, guests, "warm-up")
	chaos(t, guests, true)
	watch(t, guests, begin, begin.Add(cfg.duration))
	last := checkpoint(t, guests, "end")

	// The end: the guests stop acting and account for their last instance
	// when zcnet exits; zcnet, stopped as an operator would, prints its
	// final counters.
	finals := make([]*snapshot, len(guests))
	stats := make([]guestStats, len(guests))
	for _, g := range guests {
		if err := g.drv.send(guestCommand{finish: true}); err != nil {
			t.Fatal(err)
		}
	}
	for i, g := range guests {
		if finals[i], err = g.zcnet.stop(stopTimeout); err != nil {
			t.Fatal(err)
		}
		select {
		case <-g.drv.done:
		case <-time.After(stopTimeout):
			t.Fatalf("%s: zcnet exited, but the guest did not notice within %v", g.name, stopTimeout)
		}
		if g.drv.err != nil {
			t.Fatal(g.drv.err)
		}
		stats[i] = g.drv.stats()
	}

	ledgers := make([]*ledger, len(guests))
	for i, g := range guests {
		ledgers[i] = reconcile(g.name, finals[i], stats[i])
	}
	fmt.Print(report(guests, ledgers, stats, first, last, time.Since(begin)))
	for _, p := range verdict(guests, ledgers, stats, first, last) {
		t.Error(p)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off (SOAK_TRUNCATE=0)"
}

// chaos starts or stops the guests' actions.
func chaos(t *testing.T, guests []*soakGuest, on bool) {
	t.Helper()
	for _, g := range guests {
		if err := g.drv.send(guestCommand{chaos: &on}); err != nil {
			t.Fatal(err)
		}
	}
}

// progressEvery is how often the soak prints where it is.
const progressEvery = 30 * time.Second

// watch lets the soak run until end, failing at once if a zcnet process
// dies or a guest driver stops, and printing progress.
func watch(t *testing.T, guests []*soakGuest, begin, end time.Time) {
	t.Helper()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	timer := time.NewTimer(time.Until(end))
	defer timer.Stop()
	for {
		for _, g := range guests {
			if !g.zcnet.alive() {
				t.Fatal(g.zcnet.exitError())
			}
			select {
			case <-g.drv.done:
				t.Fatal(g.drv.stoppedError())
			default:
			}
		}
		select {
		case <-timer.C:
			return
		case <-tick.C:
			fmt.Println(progressLine(guests, time.Since(begin)))
		case <-time.After(time.Second):
		}
	}
}

// progressLine is one line of where the soak is.
func progressLine(guests []*soakGuest, elapsed time.Duration) string {
	s := fmt.Sprintf("soak %5.0fs:", elapsed.Seconds())
	for _, g := range guests {
		st := g.drv.stats()
		actions := 0
		for _, n := range st.Actions {
			actions += n
		}
		f, _ := readProc(strconv.Itoa(g.zcnet.cmd.Process.Pid))
		gr := "?"
		if d := g.zcnet.stderr.dumpsSince(time.Now().Add(-3 * schedtracePeriod)); len(d) > 0 {
			gr = strconv.Itoa(d[len(d)-1])
		}
		s += fmt.Sprintf(" | %s echoed %d, %d actions, %d instances, %d reconnects; zcnet %d fds, %s goroutines, RSS %d MiB",
			g.name, st.Echoed, actions, st.Instances, st.Resumes, f.FDs, gr, f.RSSKiB>>10)
	}
	return s
}

// figures are the processes' leak-prone resources at one checkpoint.
type figures struct {
	name  string
	zcnet []procFigures // per guest's zcnet process
	self  procFigures   // the soak process: the guests
}

// checkpoint brings both guests back to the baseline instance with chaos
// stopped, lets traffic flow, and measures: the same configuration at the
// warm-up point and at the end, so any difference is what the chaos in
// between left behind.
func checkpoint(t *testing.T, guests []*soakGuest, name string) figures {
	t.Helper()
	chaos(t, guests, false)
	replies := make([]chan error, len(guests))
	for i, g := range guests {
		replies[i] = make(chan error, 1)
		if err := g.drv.send(guestCommand{baseline: replies[i]}); err != nil {
			t.Fatal(err)
		}
	}
	for i, g := range guests {
		select {
		case err := <-replies[i]:
			if err != nil {
				t.Fatal(err)
			}
		case <-g.drv.done:
			t.Fatal(g.drv.stoppedError())
		}
	}
	f := figures{name: name}
	for _, g := range guests {
		pf, err := measure(g.zcnet)
		if err != nil {
			t.Fatal(err)
		}
		f.zcnet = append(f.zcnet, pf)
	}
	for i, g := range guests {
		z := f.zcnet[i]
		fmt.Printf("checkpoint %s: %s: %d fds, %d goroutines, %d threads, RSS %d KiB (anonymous %d), %d guest memory maps\n",
			name, g.zcnet.name, z.FDs, z.Goroutines, z.Threads, z.RSSKiB, z.AnonKiB, z.GuestMaps)
	}
	runtime.GC() // the soak's own garbage is not what is measured
	var err error
	if f.self, err = readProc("self"); err != nil {
		t.Fatal(err)
	}
	f.self.Goroutines = runtime.NumGoroutine()
	return f
}

// measure samples a zcnet process over three goroutine dumps (a few
// seconds of traffic): the smallest descriptor, thread and memory figures
// seen, so that a descriptor or a GC cycle in passing does not count, and
// the median goroutine count (a log line written into the middle of a
// dump can hide one goroutine line; the median ignores that dump).
func measure(z *zcnetProcess) (procFigures, error) {
	since := time.Now()
	pid := strconv.Itoa(z.cmd.Process.Pid)
	var low procFigures
	deadline := since.Add(10 * schedtracePeriod)
	for n := 0; ; n++ {
		if !z.alive() {
			return low, z.exitError()
		}
		f, err := readProc(pid)
		if err != nil {
			return low, fmt.Errorf("%s: %w", z.name, err)
		}
		if n == 0 {
			low = f
		}
		low.FDs, low.Threads, low.GuestMaps = min(low.FDs, f.FDs), min(low.Threads, f.Threads), min(low.GuestMaps, f.GuestMaps)
		low.RSSKiB, low.AnonKiB, low.ShmemKiB = min(low.RSSKiB, f.RSSKiB), min(low.AnonKiB, f.AnonKiB), min(low.ShmemKiB, f.ShmemKiB)
		if dumps := z.stderr.dumpsSince(since); len(dumps) >= 3 {
			dumps = dumps[:3]
			slices.Sort(dumps)
			low.Goroutines = dumps[1]
			return low, nil
		}
		if time.Now().After(deadline) {
			return low, fmt.Errorf("%s: no goroutine dumps on stderr within %v (GODEBUG schedtrace)", z.name, 10*schedtracePeriod)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
