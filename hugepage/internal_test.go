package hugepage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestKernelShortageIsAnError skips the early counter check, so the request
// reaches the kernel with too few pages free. fallocate must turn that into
// a *ShortageError; without it the process would die of SIGBUS on first
// touch.
func TestKernelShortageIsAnError(t *testing.T) {
	st, err := StatusOf(Page2M)
	if err != nil {
		t.Fatal(err)
	}
	need := st.Total + st.Overcommit + 1
	r, err := alloc(need*uint64(Page2M), Options{PageSize: Page2M}, false)
	if err == nil {
		r.Close()
		t.Fatalf("allocating %d pages with %d in the pool succeeded", need, st.Total)
	}
	var se *ShortageError
	if !errors.As(err, &se) || !errors.Is(err, ErrNoHugepages) {
		t.Fatalf("err = %v (%T), want a *ShortageError", err, err)
	}
	if !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.ENOMEM) {
		t.Errorf("err = %v, want it to carry the kernel's ENOSPC or ENOMEM", err)
	}
	if se.Need != need {
		t.Errorf("Need = %d, want %d", se.Need, need)
	}
	t.Log(err)
}

// fakeSysfs builds a hugepage tree with one 2 MiB pool and points the
// package at it.
func fakeSysfs(t *testing.T, counters map[string]string) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "hugepages-2048kB")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range counters {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := sysfsHugepages
	sysfsHugepages = root
	t.Cleanup(func() { sysfsHugepages = old })
}

func TestStatusParsesCounters(t *testing.T) {
	fakeSysfs(t, map[string]string{
		"nr_hugepages": "10", "free_hugepages": "7", "resv_hugepages": "3",
		"surplus_hugepages": "1", "nr_overcommit_hugepages": "4",
	})
	st, err := Status()
	if err != nil {
		t.Fatal(err)
	}
	want := PageStatus{Size: Page2M, Total: 10, Free: 7, Reserved: 3, Surplus: 1, Overcommit: 4}
	if len(st) != 1 || st[0] != want {
		t.Fatalf("Status() = %+v, want [%+v]", st, want)
	}
	// 7 free less 3 promised, plus 3 more surplus pages overcommit allows.
	if got := st[0].Available(); got != 7 {
		t.Errorf("Available() = %d, want 7", got)
	}
	if _, err := StatusOf(Page1G); !errors.Is(err, ErrPageSizeUnsupported) {
		t.Errorf("StatusOf(1GiB) on a tree without it: err = %v, want ErrPageSizeUnsupported", err)
	}
}

func TestStatusRejectsGarbage(t *testing.T) {
	fakeSysfs(t, map[string]string{
		"nr_hugepages": "ten", "free_hugepages": "7", "resv_hugepages": "3",
		"surplus_hugepages": "1", "nr_overcommit_hugepages": "4",
	})
	if _, err := Status(); err == nil || !strings.Contains(err.Error(), "nr_hugepages") {
		t.Errorf("err = %v, want a parse error naming nr_hugepages", err)
	}
}

// TestShortageMessage checks the arithmetic of the reservation command: the
// new total must cover what is missing, not just what was asked for.
func TestShortageMessage(t *testing.T) {
	e := &ShortageError{Need: 10, Status: PageStatus{Size: Page2M, Total: 128, Free: 6, Reserved: 2}}
	want := "need 10 x 2MiB pages but only 4 are free (128 in the pool); reserve more with: " +
		"echo 134 | sudo tee /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
	if !strings.Contains(e.Error(), want) {
		t.Errorf("message\n%s\nlacks\n%s", e.Error(), want)
	}
	// Counters that show room but a kernel that refused point elsewhere.
	e = &ShortageError{Need: 1, Status: PageStatus{Size: Page2M, Total: 8, Free: 8}, Err: unix.ENOSPC}
	if !strings.Contains(e.Error(), "cgroup") {
		t.Errorf("message %q does not point at the cgroup limit", e.Error())
	}
}

func TestMountsParsesProcMounts(t *testing.T) {
	table := filepath.Join(t.TempDir(), "mounts")
	// A tmpfs is listed as hugetlbfs under an escaped name: Mounts must
	// unescape the path and then refuse it as not really hugetlbfs.
	dir := filepath.Join(t.TempDir(), "with space")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	esc := strings.ReplaceAll(dir, " ", `\040`)
	if err := os.WriteFile(table, []byte("proc /proc proc rw 0 0\nnone "+esc+" hugetlbfs rw,pagesize=2M 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := procMounts
	procMounts = table
	t.Cleanup(func() { procMounts = old })
	_, err := Mounts()
	if err == nil || !strings.Contains(err.Error(), dir+" is not a hugetlbfs mount") {
		t.Errorf("err = %v, want the unescaped path %q refused as not hugetlbfs", err, dir)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		`/dev/hugepages`:    "/dev/hugepages",
		`/mnt/a\040b`:       "/mnt/a b",
		`/mnt/tab\011x\134`: "/mnt/tab\tx\\",
		`/mnt/trailing\04`:  `/mnt/trailing\04`,
	} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
