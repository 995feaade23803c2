package vhost_test

import (
	"errors"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/zcnet/zcnet/vhost"
)

// permissiveUmask sets the umask to 0 for the test: a socket created with
// whatever mode bind(2) gives would then be open to every local user.
func permissiveUmask(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
}

// otherGroup returns a group the socket can be given other than the
// process's own when that is allowed (root), else the process's own.
func otherGroup(t *testing.T) (name string, gid int) {
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

func statSocket(t *testing.T, path string) (os.FileMode, int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is not a socket: %v", path, fi.Mode())
	}
	return fi.Mode().Perm(), int(fi.Sys().(*syscall.Stat_t).Gid)
}

func TestListenSocketModeUnderPermissiveUmask(t *testing.T) {
	permissiveUmask(t)
	group, gid := otherGroup(t)
	for _, tc := range []struct {
		name string
		o    vhost.SocketOptions
		mode os.FileMode
		gid  int
	}{
		{"default", vhost.SocketOptions{}, 0o600, os.Getegid()},
		{"0660 and a group", vhost.SocketOptions{Mode: 0o660, Group: group}, 0o660, gid},
		{"numeric group", vhost.SocketOptions{Mode: 0o620, Group: strconv.Itoa(gid)}, 0o620, gid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vm.sock")
			l, err := vhost.ListenWith(path, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			mode, g := statSocket(t, path)
			if mode != tc.mode || g != tc.gid {
				t.Errorf("socket mode %04o group %d, want %04o group %d", uint32(mode), g, uint32(tc.mode), tc.gid)
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("the owner cannot connect: %v", err)
			}
			c.Close()
			l.Close()
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket file left after the listener closed: %v", err)
			}
		})
	}
	// Listen, the one every caller used so far, is 0600 too.
	path := filepath.Join(t.TempDir(), "vm.sock")
	l, err := vhost.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if mode, _ := statSocket(t, path); mode != 0o600 {
		t.Errorf("Listen: socket mode %04o under umask 0, want 0600", uint32(mode))
	}
}

// A strict umask takes nothing from the mode asked for either.
func TestListenSocketModeUnderStrictUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	group, gid := otherGroup(t)
	path := filepath.Join(t.TempDir(), "vm.sock")
	l, err := vhost.ListenWith(path, vhost.SocketOptions{Mode: 0o660, Group: group})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if mode, g := statSocket(t, path); mode != 0o660 || g != gid {
		t.Errorf("socket mode %04o group %d under umask 077, want 0660 group %d", uint32(mode), g, gid)
	}
}

func TestListenSocketRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		o    vhost.SocketOptions
		want string
	}{
		{"setuid bit", vhost.SocketOptions{Mode: 0o4600}, "only permission bits"},
		{"no write bit", vhost.SocketOptions{Mode: 0o444}, "no one could connect"},
		{"unknown group", vhost.SocketOptions{Group: "no-such-group-zcnet"}, `group "no-such-group-zcnet"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".sock")
			l, err := vhost.ListenWith(path, tc.o)
			if err == nil {
				l.Close()
				t.Fatalf("%+v accepted", tc.o)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q: want it to name %s and say %q", err, path, tc.want)
			}
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused socket left a file behind: %v", err)
			}
		})
	}
}

func TestParseSocketMode(t *testing.T) {
	for in, want := range map[string]os.FileMode{"0600": 0o600, "660": 0o660, "0666": 0o666} {
		if got, err := vhost.ParseSocketMode(in); err != nil || got != want {
			t.Errorf("ParseSocketMode(%q) = %04o, %v; want %04o", in, uint32(got), err, uint32(want))
		}
	}
	for _, in := range []string{"", "0", "0400", "0689", "rw-rw----", "01777", "-600"} {
		if m, err := vhost.ParseSocketMode(in); err == nil {
			t.Errorf("ParseSocketMode(%q) = %04o, want an error", in, uint32(m))
		}
	}
}
