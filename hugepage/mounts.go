package hugepage

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// procMounts is the kernel's table of mounted file systems; a variable so
// tests can feed the parser a fabricated table.
var procMounts = "/proc/mounts"

// Mount is a mounted hugetlbfs file system.
type Mount struct {
	Path     string
	PageSize PageSize
}

// Mounts lists the hugetlbfs mounts of this mount namespace, in mount order,
// with the page size each one serves.
func Mounts() ([]Mount, error) {
	b, err := os.ReadFile(procMounts)
	if err != nil {
		return nil, fmt.Errorf("hugepage: read mount table: %w", err)
	}
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// device mountpoint fstype options dump pass
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[2] != "hugetlbfs" {
			continue
		}
		path := unescapeMountPath(f[1])
		size, err := mountPageSize(path)
		if err != nil {
			return nil, err
		}
		out = append(out, Mount{Path: path, PageSize: size})
	}
	return out, sc.Err()
}

// FindMount returns the first hugetlbfs mount serving pages of the given
// size, or an error that says how to create one.
func FindMount(size PageSize) (string, error) {
	ms, err := Mounts()
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if m.PageSize == size {
			return m.Path, nil
		}
	}
	return "", fmt.Errorf("hugepage: no hugetlbfs mount serves %s pages; create one with: "+
		"mkdir -p /dev/hugepages && mount -t hugetlbfs -o pagesize=%s none /dev/hugepages", size, size.kernelArg())
}

// mountPageSize asks the kernel which page size the hugetlbfs mounted at
// path serves: statfs reports it as the block size.
func mountPageSize(path string) (PageSize, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("hugepage: statfs %s: %w", path, err)
	}
	if st.Type != unix.HUGETLBFS_MAGIC {
		return 0, fmt.Errorf("hugepage: %s is not a hugetlbfs mount (mount it with: mount -t hugetlbfs none %s)", path, path)
	}
	size := PageSize(st.Bsize)
	if !size.valid() || !size.huge() {
		return 0, fmt.Errorf("hugepage: %s reports page size %d: %w", path, st.Bsize, ErrPageSizeUnsupported)
	}
	return size, nil
}

// unescapeMountPath undoes the octal escapes (\040 for a space and so on)
// the kernel writes into /proc/mounts for awkward characters in paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
