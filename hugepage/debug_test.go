//go:build zcnetdebug

package hugepage_test

import (
	"strings"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
)

// With -tags zcnetdebug every pool checks for double frees, even one whose
// configuration did not ask for it.
func TestDebugBuildChecksEveryPool(t *testing.T) {
	_, p := newPool(t, hugepage.PoolConfig{Count: 8})
	two := make([]uint32, 2)
	p.Get(two)
	p.Put(two[:1])
	if msg := mustPanic(t, "double Put in a debug build", func() { p.Put(two[:1]) }); !strings.Contains(msg, "double free") {
		t.Errorf("panic %q, want double free", msg)
	}
}
