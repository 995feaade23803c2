// Package testwait holds the one way zcnet's tests wait for something that
// happens on another goroutine (an lcore, a simulator running free, a
// session goroutine): poll a condition until it holds, and fail the test
// if it does not within a bound. The bound is a guard against hangs, not a
// timing measurement: a slow machine only waits longer.
package testwait

import (
	"testing"
	"time"
)

// Bound is how long For waits before it fails the test.
const Bound = 10 * time.Second

// For polls cond every millisecond until it holds; it fails the test,
// naming what it waited for, if cond is still false after Bound.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", Bound, what)
		}
		time.Sleep(time.Millisecond)
	}
}
