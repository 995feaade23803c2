package vhost_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// memServer is a device over a real socket whose refusals are recorded,
// for tests that play a hostile front end handing over memory.
type memServer struct {
	*vhosttest.Server
	hook *recordingHook
	logs *observer.ObservedLogs
}

func serveMem(t *testing.T, cfg vhost.Config) *memServer {
	core, logs := observer.New(zap.WarnLevel)
	hook := &recordingHook{mapped: map[*byte]int{}}
	cfg.Hook, cfg.Logger = hook, zap.New(core)
	return &memServer{Server: vhosttest.Serve(t, cfg), hook: hook, logs: logs}
}

// refused checks that the last request was refused with an error naming
// want, and that nothing was left mapped for the device.
func (s *memServer) refused(t *testing.T, err error, want string) {
	t.Helper()
	refusalLog{s.logs}.refused(t, err, want)
	if n := s.hook.count(); n != 0 {
		t.Fatalf("%d regions left DMA-mapped after a refused table", n)
	}
}

// stillServes connects a well-behaved guest after a refusal: the device
// must serve it as if nothing had happened, and every descriptor of both
// sessions must be closed after it leaves.
func (s *memServer) stillServes(t *testing.T, before int) {
	t.Helper()
	waitDisconnected(t, s.Dev)
	g, err := guest.Dial(s.Path, guest.Options{Memory: guest.MemoryOptions{Split: true}})
	if err != nil {
		t.Fatalf("a well-behaved front end after the refusal: %v", err)
	}
	if st := s.Dev.Status(); st&vhost.StatusDriverOK == 0 {
		t.Fatalf("status %#x after a well-behaved setup", st)
	}
	if n := s.hook.count(); n != 2 {
		t.Fatalf("%d regions mapped for the well-behaved guest, want 2", n)
	}
	g.Close()
	waitDisconnected(t, s.Dev)
	if after := fdsAfterSession(t, before); after != before {
		t.Fatalf("%d descriptors leaked (%d open before, %d after)", after-before, before, after)
	}
	if m := mappedFiles(t); m != "" {
		t.Fatalf("guest memory still mapped after the session:\n%s", m)
	}
}

// isMemoryFile reports whether a /proc/self/fd link or a mapping's name is
// an eventfd or a file a front end could pass as guest memory.
func isMemoryFile(name string) bool {
	for _, p := range []string{"/memfd:", "/dev/zero", "/dev/hugepages/", "/dev/shm/", "anon_inode:[eventfd]", memfileTestDir} {
		if strings.HasPrefix(name, p) || strings.Contains(name, p) {
			return true
		}
	}
	return false
}

// memfileTestDir marks files these tests create on disk.
const memfileTestDir = "zcnet-memfile-test"

// mappedFiles lists this process's mappings of memory files a front end
// passed (the test's own mappings of its guest are gone once it closed).
func mappedFiles(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && isMemoryFile(strings.Join(f[5:], " ")) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// memfd returns a memfd of size bytes with the given seals (none: not even
// sealable); the caller closes it.
func memfd(t *testing.T, name string, size int64, seals int) int {
	t.Helper()
	flags := unix.MFD_CLOEXEC
	if seals != 0 {
		flags |= unix.MFD_ALLOW_SEALING
	}
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if seals != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	return fd
}

// setMemTable sends a one-region table over fd from a front end that
// negotiated REPLY_ACK, and closes the connection.
func setMemTable(t *testing.T, path string, r vhost.RegionDesc, fd int) error {
	t.Helper()
	fe := ackedFrontend(t, path)
	defer fe.Close()
	if _, err := fe.Request(vhost.ReqSetOwner, nil); err != nil {
		t.Fatal(err)
	}
	_, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable([]vhost.RegionDesc{r}), fd)
	return err
}

func region(size uint64) vhost.RegionDesc {
	return vhost.RegionDesc{GuestPhysAddr: 0x100000, Size: size, UserAddr: 0x7f0000000000}
}

// TestMemoryThatIsNotSharedIsRefused: /dev/zero (an 8 GiB region: memory
// this process would allocate as it, or the NIC, touched it) and a file on
// disk are not guest memory and must be refused before anything is mapped.
func TestMemoryThatIsNotSharedIsRefused(t *testing.T) {
	s := serveMem(t, vhost.Config{})
	before := openFDs(t)
	zero, err := unix.Open("/dev/zero", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = setMemTable(t, s.Path, region(8<<30), zero)
	unix.Close(zero)
	s.refused(t, err, "not a shared-memory file")
	if m := mappedFiles(t); m != "" {
		t.Fatalf("refused memory is mapped:\n%s", m)
	}
	s.stillServes(t, before)

	// A regular file on a disk file system (the test's temp dir, unless
	// it is a tmpfs, which would be shared memory).
	dir := filepath.Join(t.TempDir(), memfileTestDir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type == unix.TMPFS_MAGIC {
		t.Skipf("temp dir is on tmpfs (%v): no disk file to try", err)
	}
	f, err := os.Create(filepath.Join(dir, "mem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	err = setMemTable(t, s.Path, region(1<<20), int(f.Fd()))
	f.Close()
	s.refused(t, err, "not a shared-memory file")
	s.stillServes(t, before)
}

// TestUnsealedMemfdIsRefused: a memfd the front end could shrink under our
// mapping (which would SIGBUS the whole process on the next access) is
// refused; one sealed against shrinking is served.
func TestUnsealedMemfdIsRefused(t *testing.T) {
	s := serveMem(t, vhost.Config{})
	before := openFDs(t)
	for _, c := range []struct {
		name  string
		seals int
	}{
		{"not sealable", 0},
		{"sealed against growing only", unix.F_SEAL_GROW},
	} {
		fd := memfd(t, "zcnet-unsealed", 1<<20, c.seals)
		before := before + 1 // the test's own descriptor, closed at the end
		s.refused(t, setMemTable(t, s.Path, region(1<<20), fd), "not sealed against shrinking")
		if m := mappedFiles(t); m != "" {
			t.Fatalf("%s: refused memory is mapped:\n%s", c.name, m)
		}
		s.stillServes(t, before)
		unix.Close(fd)
	}
	// The same memfd sealed as QEMU seals it is accepted.
	fd := memfd(t, "zcnet-sealed", 1<<20, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	fe := ackedFrontend(t, s.Path)
	if _, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable([]vhost.RegionDesc{region(1 << 20)}), fd); err != nil {
		t.Fatalf("sealed memfd refused: %v", err)
	}
	if n := s.hook.count(); n != 1 {
		t.Fatalf("%d regions mapped for a sealed memfd, want 1", n)
	}
	fe.Close()
	unix.Close(fd)
	s.stillServes(t, before)
}

// TestHugetlbfsFileIsServed: a file in a hugetlbfs mount (QEMU's
// memory-backend-file,mem-path=/dev/hugepages) cannot be sealed and is
// served as it is.
func TestHugetlbfsFileIsServed(t *testing.T) {
	const dir = "/dev/hugepages"
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || uint32(fs.Type) != unix.HUGETLBFS_MAGIC {
		t.Skipf("no hugetlbfs mounted at %s (%v)", dir, err)
	}
	s := serveMem(t, vhost.Config{})
	before := openFDs(t)
	f, err := os.CreateTemp(dir, memfileTestDir)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name())
	defer f.Close()
	if err := f.Truncate(4 << 20); err != nil {
		t.Skipf("no free 2 MiB hugepages: %v", err)
	}
	fe := ackedFrontend(t, s.Path)
	if _, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable([]vhost.RegionDesc{region(4 << 20)}), int(f.Fd())); err != nil {
		t.Fatalf("hugetlbfs file refused: %v", err)
	}
	if n := s.hook.count(); n != 1 {
		t.Fatalf("%d regions mapped for a hugetlbfs file, want 1", n)
	}
	fe.Close()
	f.Close()
	s.stillServes(t, before)
}

// TestRegionPastTheFileIsRefused: mapping past the end of the file would
// SIGBUS on the first access to the part that is not there.
func TestRegionPastTheFileIsRefused(t *testing.T) {
	s := serveMem(t, vhost.Config{})
	before := openFDs(t) + 1 // the test's memfd
	fd := memfd(t, "zcnet-short", 1<<20, unix.F_SEAL_SHRINK)
	defer unix.Close(fd)
	r := region(1 << 20)
	r.MmapOffset = 4096
	s.refused(t, setMemTable(t, s.Path, r, fd), "shorter than offset+size")
	s.stillServes(t, before)
}

// TestMemoryOverTheDeviceLimitIsRefused: a table describing more memory
// than the device may map is refused before anything is mapped, by
// SET_MEM_TABLE as a whole and by ADD_MEM_REG counting what is already
// there; the default limit holds too.
func TestMemoryOverTheDeviceLimitIsRefused(t *testing.T) {
	// Room for the well-behaved guest, not for twice as much.
	const limit = 128 << 20
	s := serveMem(t, vhost.Config{MemLimit: limit})
	before := openFDs(t) + 1 // the test's memfd
	// 192 MiB in two regions (sparse: nothing is touched).
	fd := memfd(t, "zcnet-big-table", 192<<20, unix.F_SEAL_SHRINK)
	defer unix.Close(fd)
	regs := []vhost.RegionDesc{
		{GuestPhysAddr: 0, Size: 96 << 20, UserAddr: 0x7f0000000000},
		{GuestPhysAddr: 1 << 32, Size: 96 << 20, UserAddr: 0x7f0010000000, MmapOffset: 96 << 20},
	}
	fe := ackedFrontend(t, s.Path)
	_, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(regs), fd, fd)
	s.refused(t, err, "over the device's limit")
	// Region by region: the first 96 MiB fit, the second does not.
	if _, err := fe.Request(vhost.ReqAddMemReg, vhost.EncodeMemReg(regs[0]), fd); err != nil {
		t.Fatalf("ADD_MEM_REG within the limit: %v", err)
	}
	_, err = fe.Request(vhost.ReqAddMemReg, vhost.EncodeMemReg(regs[1]), fd)
	refusalLog{s.logs}.refused(t, err, "over the device's limit")
	if n := s.hook.count(); n != 1 {
		t.Fatalf("%d regions mapped after ADD_MEM_REG over the limit, want the first only", n)
	}
	fe.Close()
	s.stillServes(t, before)

	// The default limit: a sparse memfd of 65 GiB costs nothing until
	// touched, but a device must not map (and a NIC pin) that much.
	d := serveMem(t, vhost.Config{})
	huge := memfd(t, "zcnet-huge-table", 65<<30, unix.F_SEAL_SHRINK)
	defer unix.Close(huge)
	d.refused(t, setMemTable(t, d.Path, region(65<<30), huge), "over the device's limit")
	d.stillServes(t, before+1)
}
