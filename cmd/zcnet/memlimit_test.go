package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/sim/guest"
)

func TestParseMemSize(t *testing.T) {
	const notBytes = "give bytes, optionally with a K, M, G or T suffix"
	for _, c := range []struct {
		in      string
		want    uint64
		refused string // what the error says, "" if the size is fine
	}{
		{"1073741824", 1 << 30, ""},
		{"64G", 64 << 30, ""},
		{"64g", 64 << 30, ""},
		{"512MiB", 512 << 20, ""},
		{"512MB", 512 << 20, ""},
		{"2T", 2 << 40, ""},
		{"4K", 4 << 10, ""},
		{"", 0, notBytes},
		{"G", 0, notBytes},
		{"1.5G", 0, notBytes},
		{"-1G", 0, notBytes},
		{"64X", 0, notBytes},
		{"99999999999T", 0, "too large"},
	} {
		got, err := appliance.ParseMemSize(c.in)
		switch {
		case c.refused == "" && (err != nil || got != c.want):
			t.Errorf("ParseMemSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("ParseMemSize(%q) = %d, %v; want an error saying %q", c.in, got, err, c.refused)
		}
	}
}

// TestRunVhostMemLimit: --vhost-mem-limit caps what a front end may have
// zcnet map: a guest with more memory is refused its memory table (and
// zcnet goes on running); nonsense limits are refused up front.
func TestRunVhostMemLimit(t *testing.T) {
	useSimDevices(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "vm.sock")
	for _, c := range []struct{ limit, want string }{
		{"64", "under 2 MiB"},
		{"lots", "give bytes"},
	} {
		args := []string{"run", "--duration", "10ms", "--telemetry", "", "--pci", "a", "--vhost", sock, "--vhost-mem-limit", c.limit}
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--vhost-mem-limit %s: err = %v, want it to mention %q", c.limit, err, c.want)
		}
	}
	stop := startRun("--pci", "0000:03:00.0", "--vhost", sock, "--rxd", "256", "--txd", "256", "--telemetry", "", "--vhost-mem-limit", "16M")
	waitSocket(t, sock)
	g, err := guest.Dial(sock, guest.Options{Memory: guest.MemoryOptions{Size: 32 << 20}})
	if err == nil {
		g.Close()
		t.Fatal("a guest of 32 MiB was served under --vhost-mem-limit 16M")
	}
	if !strings.Contains(err.Error(), "SET_MEM_TABLE") {
		t.Fatalf("guest of 32 MiB: %v, want its SET_MEM_TABLE refused", err)
	}
	// A guest that fits is served.
	g, err = guest.Dial(sock, guest.Options{Memory: guest.MemoryOptions{Size: 16 << 20}})
	if err != nil {
		t.Fatalf("a guest of 16 MiB under --vhost-mem-limit 16M: %v", err)
	}
	g.Close()
	if out, err := stop(); err != nil {
		t.Fatalf("zcnet run: %v\n%s", err, out)
	}
}
