package main

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/pollmode"
)

// TestLcoreDeathIsLogged: the crash is logged at error level with the task,
// the lcore and the panic's stack, for the operator to report.
func TestLcoreDeathIsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	pe := &pollmode.TaskPanicError{Lcore: 3, CPU: 1, Task: "port:x", Value: "boom", Stack: []byte("goroutine 7 [running]:")}
	err := logLcoreDeath(zap.New(core), pe)
	if !errors.Is(err, pe) && !errors.As(err, &pe) {
		t.Fatalf("returned error %v does not wrap the panic", err)
	}
	entries := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(entries) != 1 {
		t.Fatalf("want one error log entry, got %d", logs.Len())
	}
	f := entries[0].ContextMap()
	if f["task"] != "port:x" || f["lcore"] != int64(3) || !strings.Contains(f["stack"].(string), "goroutine 7") {
		t.Fatalf("log entry lacks the task, lcore or stack: %v", f)
	}
}
