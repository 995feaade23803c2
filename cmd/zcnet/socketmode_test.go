package main

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/zcnet/zcnet/appliance"
)

// socketGroup returns a group zcnet may give its sockets other than its
// own when it is allowed to (root), else its own.
func socketGroup(t *testing.T) (name string, gid int) {
	if os.Geteuid() == 0 {
		for _, n := range []string{"daemon", "nogroup", "users", "bin"} {
			if g, err := user.LookupGroup(n); err == nil && g.Gid != strconv.Itoa(os.Getegid()) {
				id, _ := strconv.Atoi(g.Gid)
				return n, id
			}
		}
	}
	return strconv.Itoa(os.Getegid()), os.Getegid()
}

func checkSocketMode(t *testing.T, path string, mode os.FileMode, gid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	got, g := fi.Mode().Perm(), int(fi.Sys().(*syscall.Stat_t).Gid)
	if fi.Mode()&os.ModeSocket == 0 || got != mode || g != gid {
		t.Errorf("%s: %v group %d, want a socket mode %04o group %d", filepath.Base(path), fi.Mode(), g, uint32(mode), gid)
	}
}

// TestSocketModesUnderPermissiveUmask: under umask 0, the vhost-user
// sockets zcnet run and zcnet sim create and their telemetry sockets have
// the mode asked for (0600 unless --vhost PATH,mode=,group= says
// otherwise), not the 0777 bind(2) would give.
func TestSocketModesUnderPermissiveUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	group, gid := socketGroup(t)
	f := useSimDevices(t)
	dir := t.TempDir()
	a, b, tel := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"), filepath.Join(dir, "tel.sock")
	stop := startRun("--pci", "0000:07:00.0", "--pci", "0000:08:00.0", "--vhost", a+",mode=0660,group="+group, "--vhost", b,
		"--rxd", "256", "--txd", "256", "--telemetry", tel)
	waitTelemetry(t, tel)
	waitSocket(t, a)
	waitSocket(t, b)
	checkSocketMode(t, a, 0o660, gid)
	checkSocketMode(t, b, 0o600, os.Getegid())
	checkSocketMode(t, tel, 0o600, os.Getegid())
	pf, _ := f.pf("0000:07:00.0")
	checkShutdown(t, stop, pf)

	s, simTel := filepath.Join(dir, "sim.sock"), filepath.Join(dir, "simtel.sock")
	startSim(t, "--vhost", s+",mode=0620,group="+group, "--telemetry", simTel)
	waitTelemetry(t, simTel)
	checkSocketMode(t, s, 0o620, gid)
	checkSocketMode(t, simTel, 0o600, os.Getegid())
}

func TestSocketModeFlagErrors(t *testing.T) {
	useSimDevices(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "g.sock")
	cfg := filepath.Join(dir, "mode.json")
	os.WriteFile(cfg, []byte(`{"nics": [{"pci": "a", "guests": [{"socket": "`+sock+`", "mode": "4660"}]}]}`), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--pci", "a", "--vhost", sock + ",mode=0999"}, `socket mode "0999"`},
		{[]string{"run", "--pci", "a", "--vhost", sock + ",mode=0444"}, "no one could connect"},
		{[]string{"run", "--pci", "a", "--vhost", sock + ",group=no-such-group-zcnet"}, `group "no-such-group-zcnet"`},
		{[]string{"run", "--pci", "a", "--vhost", sock + ",mdoe=0660"}, `unknown option "mdoe"`},
		{[]string{"run", "--pci", "a", "--vhost", sock + ",mode=0600,mode=0660"}, "mode given twice"},
		{[]string{"run", "--pci", "a", "--vhost", sock + ",mode=0660", "--vhost-client"}, "client mode"},
		{[]string{"run", "--config", cfg}, "only permission bits"},
		{[]string{"sim", "--vhost", sock + ",mode=rw"}, `socket mode "rw"`},
		{[]string{"sim", "--vhost", sock + ",group=no-such-group-zcnet"}, `group "no-such-group-zcnet"`},
		{[]string{"sim", "--vhost", sock + ",mac=52:54:00:12:34:56", "--guest-mac", "52:54:00:12:34:57"}, "MAC once"},
	} {
		args := append(c.args, "--duration", "10ms", "--telemetry", "")
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(args, " "), err, c.want)
		}
		if _, err := os.Lstat(sock); err == nil {
			t.Errorf("zcnet %s left a socket behind", strings.Join(args, " "))
			os.Remove(sock)
		}
	}
}

func TestParseVhostFlag(t *testing.T) {
	on, off := true, false
	for in, want := range map[string]appliance.GuestSpec{
		"/run/vm.sock":                                    {Socket: "/run/vm.sock"},
		"/run/vm.sock,mac=52:54:00:12:34:56":              {Socket: "/run/vm.sock", MAC: "52:54:00:12:34:56"},
		"/run/vm.sock,mode=0660,group=kvm":                {Socket: "/run/vm.sock", Mode: "0660", Group: "kvm"},
		"/run/vm.sock,group=kvm,mac=52:54:00:12:34:56":    {Socket: "/run/vm.sock", MAC: "52:54:00:12:34:56", Group: "kvm"},
		"/run/a,b/vm.sock":                                {Socket: "/run/a,b/vm.sock"},
		"/run/x=1,y/vm.sock,mode=0600":                    {Socket: "/run/x=1,y/vm.sock", Mode: "0600"},
		"/run/vm,1.sock":                                  {Socket: "/run/vm,1.sock"},
		"/run/vm.sock,mode=0660,group=kvm,mac=52:54:0:0":  {Socket: "/run/vm.sock", Mode: "0660", Group: "kvm", MAC: "52:54:0:0"},
		"/run/vm.sock,migration=on,mac=52:54:00:12:34:56": {Socket: "/run/vm.sock", MAC: "52:54:00:12:34:56", Migration: &on},
		"/run/vm.sock,migration=off":                      {Socket: "/run/vm.sock", Migration: &off},
	} {
		got, err := parseVhostFlag(in)
		if err != nil || !got.Equal(want) || got.Migrates() != want.Migrates() {
			t.Errorf("parseVhostFlag(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	if g, _ := parseVhostFlag("/run/vm.sock"); !g.Migrates() {
		t.Error("a guest is not offered live migration by default")
	}
	if g, _ := parseVhostFlag("/run/vm.sock,migration=off"); g.Migrates() {
		t.Error("migration=off still offers live migration")
	}
	if _, err := parseVhostFlag("/run/vm.sock,migration=yes"); err == nil || !strings.Contains(err.Error(), "migration=yes") {
		t.Errorf("parseVhostFlag with migration=yes: %v; want an error naming it", err)
	}
}
