// Package lib holds the Go side shared by the QEMU harnesses' host tests
// (test/qemu-vhost, test/qemu-zerocopy, test/qemu-migration): the QEMU
// process and its console, commands; the shell side is qemu-guest.sh
// and guest-init.sh next to it.
package lib

import (
	"os"
	"strings"
	"testing"
)

// Env returns the variable name that the harness's run.sh sets, failing
// the test if it is missing: the test cannot run without what run.sh
// prepares (what names that, for the message).
func Env(t *testing.T, name, runSh, what string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run this test through %s, which builds %s", name, runSh, what)
	}
	return v
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
