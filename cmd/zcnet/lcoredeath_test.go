package main

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/zcnet/zcnet/driver"
)

// crashingTask panics on its tenth poll, standing in for a bug in a task.
type crashingTask struct{ polls atomic.Int64 }

func (*crashingTask) Name() string { return "crasher" }
func (c *crashingTask) Poll() int {
	if c.polls.Add(1) == 10 {
		panic("test: a bug in a poll round")
	}
	return 0
}

// TestSimStopsWhenAnLcoreDies: a task panicking on an lcore must end
// `zcnet sim` at once with an error naming the panic (the binary exits
// non-zero on it), not leave it running with a dead data path until the
// duration is over.
func TestSimStopsWhenAnLcoreDies(t *testing.T) {
	testExtraTask = func() driver.Task { return &crashingTask{} }
	defer func() { testExtraTask = nil }()
	const duration = 20 * time.Second
	start := time.Now()
	out, err := execute("sim", "--duration", duration.String(), "--rate", "1000", "--stats-period", "0", "--telemetry", "")
	var pe *driver.TaskPanicError
	if !errors.As(err, &pe) || pe.Task != "crasher" || !strings.Contains(err.Error(), "data path stopped") {
		t.Fatalf("zcnet sim returned %v, want the task panic of crasher\n%s", err, out)
	}
	if took := time.Since(start); took >= duration {
		t.Fatalf("zcnet sim ran its whole %v with a dead lcore", took)
	}
}

// TestLcoreDeathIsLogged: the crash is logged at error level with the task,
// the lcore and the panic's stack, for the operator to report.
func TestLcoreDeathIsLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	pe := &driver.TaskPanicError{Lcore: 3, CPU: 1, Task: "port:x", Value: "boom", Stack: []byte("goroutine 7 [running]:")}
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
