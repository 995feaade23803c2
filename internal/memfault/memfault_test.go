package memfault

import (
	"testing"

	"golang.org/x/sys/unix"
)

// truncatedMapping returns a shared mapping of a memfd page whose file has
// been truncated to nothing: touching it raises SIGBUS.
func truncatedMapping(t *testing.T) []byte {
	t.Helper()
	fd, err := unix.MemfdCreate("memfault-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	mem[0] = 1 // mapped and present
	if err := unix.Ftruncate(fd, 0); err != nil {
		t.Fatal(err)
	}
	return mem
}

// touch writes b[off] with faults enabled and returns what was recovered.
func touch(b []byte, off int) (recovered any) {
	defer func() { recovered = recover() }()
	defer Restore(Enable())
	b[off] = 2
	return nil
}

func TestTruncatedMemoryIsAFault(t *testing.T) {
	mem := truncatedMapping(t)
	v := touch(mem, 100)
	f, ok := FromPanic(v)
	if !ok {
		t.Fatalf("recovered %v (%T), want a memory fault", v, v)
	}
	if base := uintptr(unsafeAddr(mem)); f.Addr != base+100 {
		t.Fatalf("fault at %#x, want %#x (the byte written)", f.Addr, base+100)
	}
	if f.Error() == "" || f.Unwrap() == nil {
		t.Fatalf("fault %#v does not describe itself", f)
	}
}

func TestOtherPanicsAreNotFaults(t *testing.T) {
	var nilMap *[8]byte
	for name, v := range map[string]any{
		"value":     "boom",
		"nil deref": func() (r any) { defer func() { r = recover() }(); nilMap[0] = 1; return nil }(),
		"index":     func() (r any) { defer func() { r = recover() }(); var s []byte; i := 5; _ = s[i]; return nil }(),
		"no panic":  nil,
	} {
		if _, ok := FromPanic(v); ok {
			t.Errorf("%s (%v) taken for a memory fault", name, v)
		}
	}
}

func TestRestoreGivesBackTheSetting(t *testing.T) {
	outer := Enable()
	inner := Enable()
	if !inner {
		t.Fatal("Enable did not report the setting it found")
	}
	Restore(inner)
	Restore(outer)
	if prev := Enable(); prev != outer {
		t.Fatalf("setting %v after Restore, want %v", prev, outer)
	}
	Restore(outer)
}
