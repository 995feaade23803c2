package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func execute(args ...string) (string, error) {
	cmd := newRootCommandWith(testOpener)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestVersion(t *testing.T) {
	out, err := execute("version")
	if err != nil || !strings.HasPrefix(out, "zcnet "+version+" (commit ") {
		t.Errorf("version: %q, %v", out, err)
	}
}

// TestCPUProfile: --cpuprofile leaves a CPU profile (gzip, as pprof writes it),
// and a path it cannot create is an error before the command runs.
func TestCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.prof")
	if _, err := execute("--cpuprofile", path, "version"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A profile is a gzip-compressed protocol buffer.
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--cpuprofile wrote %d bytes that are not a gzip stream: % x", len(b), b[:min(len(b), 8)])
	}
	_, err = execute("--cpuprofile", filepath.Join(t.TempDir(), "missing", "cpu.prof"), "version")
	if err == nil || !strings.Contains(err.Error(), "--cpuprofile") {
		t.Errorf("--cpuprofile into a missing directory: err = %v, want a --cpuprofile error", err)
	}
}

func TestCommandErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--log-level", "loud", "version"}, "want debug, info, warn or error"},
		{[]string{"bind", "--dry-run", "03:00"}, "invalid PCI address"},
		{[]string{"unbind", "--dry-run", "0000:ff:1f.7"}, "not found"},
		{[]string{"bind"}, "requires at least 1 arg"},
		{[]string{"probe", "extra"}, "unknown command"},
	}
	for _, c := range cases {
		_, err := execute(c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// TestRunForwardSimulated runs `zcnet fwd --sim` for a moment at a
// rate the simulator sustains under the race detector and expects every
// generated frame at the sink.
func TestRunForwardSimulated(t *testing.T) {
	out, err := execute("fwd", "--sim", "--duration", "1s", "--rate", "5000", "--stats-period", "0")
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "lost 0, bad checksums 0") {
		t.Errorf("forwarding lost frames:\n%s", out)
	}
	if strings.Contains(out, "sink received 0,") {
		t.Errorf("nothing was forwarded:\n%s", out)
	}
}

func TestRunForwardFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "give the NIC with --pci"},
		{[]string{"fwd"}, "give either exactly two --pci ports or --sim"},
		{[]string{"fwd", "--pci", "0000:01:00.0"}, "needs exactly two --pci ports, got 1"},
		{[]string{"fwd", "--sim", "--pci", "0000:01:00.0"}, "give either exactly two --pci ports or --sim"},
		{[]string{"fwd", "--sim", "-l", "5-3"}, `range "5-3" is reversed`},
		{[]string{"fwd", "--sim", "--vhost", "x"}, "unknown flag: --vhost"},
		{[]string{"run", "--fwd"}, "unknown flag: --fwd"},
	} {
		if _, err := execute(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to say %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
