package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zcnet/zcnet/control"
)

// TestPortCommandsAndReload drives a running `zcnet run` as an operator
// does: guests added and removed with `zcnet port`, listed and shown, bad
// requests refused with a message and nothing changed, and the YAML
// configuration edited and re-read on SIGHUP, which applies exactly the
// edit.
func TestPortCommandsAndReload(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"), filepath.Join(dir, "c.sock")
	ctl, cfg := filepath.Join(dir, "control.sock"), filepath.Join(dir, "zcnet.yaml")
	config := func(guests03, guests04 string) {
		t.Helper()
		y := "nics:\n" +
			"  - pci: \"0000:03:00.0\"\n    rxd: 256\n    txd: 256\n    max_guests: 1\n    guests: [" + guests03 + "]\n" +
			"  - pci: \"0000:04:00.0\"\n    rxd: 256\n    txd: 256\n    max_guests: 1\n    guests: [" + guests04 + "]\n"
		if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	config("{socket: "+a+"}", "")
	stop := startRun("--config", cfg, "--control", ctl, "--telemetry", "")
	waitSocket(t, a)
	waitSocket(t, ctl)
	ga := dialEcho(t, a)
	defer ga.Close()
	pf3, sink3 := f.pf("0000:03:00.0")
	pf4, sink4 := f.pf("0000:04:00.0")
	echoThrough(t, pf3, sink3, 64)

	port := func(args ...string) (string, error) {
		return execute(append(append([]string{"port"}, args...), "--control", ctl)...)
	}
	out, err := port("add", b, "--nic", "0000:04:00.0", "--mac", "52:54:00:00:00:0b")
	if err != nil || !strings.Contains(out, b) || !strings.Contains(out, "52:54:00:00:00:0b (configured)") {
		t.Fatalf("port add: %v\n%s", err, out)
	}
	gb := dialEcho(t, b)
	echoThrough(t, pf4, sink4, 64)
	out, err = port("list", "--json")
	var list control.Response
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list.Guests) != 2 || len(list.NICs) != 2 || list.NICs[1].Guests != 1 {
		t.Fatalf("port list: %v\n%s", err, out)
	}
	if out, err = port("show", b); err != nil || !strings.Contains(out, "0000:04:00.0/0<->"+b+"/0") {
		t.Fatalf("port show: %v\n%s", err, out)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"add", c, "--nic", "0000:04:00.0"}, "serves 1 guests already"},
		{[]string{"add", c, "--nic", "0000:09:00.0"}, "no NIC port 0000:09:00.0"},
		{[]string{"add", b, "--nic", "0000:04:00.0"}, "served already"},
		{[]string{"add", c, "--nic", "0000:04:00.0", "--mac", "01:00:5e:00:00:01"}, "multicast"},
		{[]string{"del", c}, "no guest on socket " + c},
		{[]string{"show", c}, "no guest on socket " + c},
	} {
		if out, err := port(bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("port %s: %v (%s), want an error saying %q", strings.Join(bad.args, " "), err, out, bad.want)
		}
	}
	if _, err := os.Stat(c); !os.IsNotExist(err) {
		t.Fatalf("a refused port add left socket %s behind (%v)", c, err)
	}
	if _, err := port("del", b); err != nil {
		t.Fatalf("port del: %v", err)
	}
	gb.Close()
	if _, err := os.Stat(b); !os.IsNotExist(err) {
		t.Fatalf("socket %s still there after port del (%v)", b, err)
	}
	// The first guest never noticed.
	echoThrough(t, pf3, sink3, 64)

	// The file now has a removed and c added on the other NIC: SIGHUP.
	config("", "{socket: "+c+"}")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := control.Call(ctl, control.Request{Command: control.CommandPortList})
		if err == nil && len(resp.Guests) == 1 && resp.Guests[0].Socket == c {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP the guests are %+v (%v), want only %s", resp.Guests, err, c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(a); !os.IsNotExist(err) {
		t.Fatalf("socket %s still there after it left the configuration (%v)", a, err)
	}
	gc := dialEcho(t, c)
	defer gc.Close()
	echoThrough(t, pf4, sink4, 64)
	if out, err := execute("reload", "--control", ctl); err != nil || strings.TrimSpace(out) != "nothing changed" {
		t.Fatalf("zcnet reload of an unchanged file: %v\n%s", err, out)
	}
	config("", "{socket: "+c+", bogus: 1}")
	if out, err := execute("reload", "--control", ctl); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("zcnet reload of a file with an unknown key: %v\n%s", err, out)
	}
	checkShutdown(t, stop, pf3, pf4)
}

// TestRunSimulatedPorts: `zcnet run --sim` serves guests on simulated
// 82599s at the given addresses, so the control plane can be tried
// without a NIC.
func TestRunSimulatedPorts(t *testing.T) {
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "vm.sock"), filepath.Join(dir, "control.sock")
	stop := startRun("--sim", "--pci", "sim-a", "--vhost", sock, "--rxd", "256", "--txd", "256", "--control", ctl, "--telemetry", "")
	waitSocket(t, ctl)
	out, err := execute("port", "list", "--control", ctl)
	if err != nil || !strings.Contains(out, "sim-a") || !strings.Contains(out, sock) {
		t.Fatalf("port list: %v\n%s", err, out)
	}
	g := dialEcho(t, sock)
	defer g.Close()
	checkShutdown(t, stop)
}
