package pollmode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcnet/zcnet/internal/testwait"

	"golang.org/x/sys/unix"
)

// funcTask adapts a function to Task.
type funcTask struct {
	name string
	poll func() int
}

func (t *funcTask) Name() string { return t.name }
func (t *funcTask) Poll() int    { return t.poll() }

// idleTask never has work and counts its polls so tests can see the lcore
// running.
type idleTask struct {
	name  string
	polls atomic.Uint64
}

func (t *idleTask) Name() string { return t.name }
func (t *idleTask) Poll() int    { t.polls.Add(1); return 0 }

// stopWithin stops r and fails if Stop hangs.
func stopWithin(t *testing.T, r *Runner) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Stop() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
		return nil
	}
}

func allowedCPUs(t *testing.T) []int {
	t.Helper()
	cpus, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) == 0 {
		t.Fatal("the process has no allowed CPUs")
	}
	return cpus
}

// procStatusField returns a field of a /proc status file.
func procStatusField(path, field string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s has no %s field", path, field)
}

func TestAllowedCPUsMatchesProcStatus(t *testing.T) {
	want, err := procStatusField("/proc/self/status", "Cpus_allowed_list")
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatCoreList(allowedCPUs(t)); got != want {
		t.Errorf("FormatCoreList(AllowedCPUs()) = %q, /proc/self/status Cpus_allowed_list = %q", got, want)
	}
}

// pinProbe records, from inside its first poll, how the kernel sees the
// polling thread.
type pinProbe struct {
	name     string
	once     sync.Once
	done     chan struct{}
	tid      int
	affinity []int
	procList string
	err      error
}

func newPinProbe(name string) *pinProbe { return &pinProbe{name: name, done: make(chan struct{})} }

func (p *pinProbe) Name() string { return p.name }

func (p *pinProbe) Poll() int {
	p.once.Do(func() {
		defer close(p.done)
		p.tid = unix.Gettid()
		var set unix.CPUSet
		if p.err = unix.SchedGetaffinity(0, &set); p.err != nil {
			return
		}
		for c := 0; c < MaxCPUs; c++ {
			if set.IsSet(c) {
				p.affinity = append(p.affinity, c)
			}
		}
		p.procList, p.err = procStatusField(fmt.Sprintf("/proc/self/task/%d/status", p.tid), "Cpus_allowed_list")
	})
	return 0
}

func TestLcorePinsItsThread(t *testing.T) {
	before := allowedCPUs(t)
	cpus := before
	if len(cpus) > 4 {
		cpus = cpus[:4]
	}
	var configs []LcoreConfig
	var probes []*pinProbe
	for i, c := range cpus {
		p := newPinProbe(fmt.Sprintf("probe%d", i))
		probes = append(probes, p)
		configs = append(configs, LcoreConfig{ID: i, CPU: c, Tasks: []Task{p}})
	}
	r, err := NewRunner(RunnerOptions{Idle: IdleYield}, configs)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		<-p.done
	}
	if err := stopWithin(t, r); err != nil {
		t.Fatal(err)
	}
	for i, p := range probes {
		cpu := cpus[i]
		if p.err != nil {
			t.Errorf("lcore on CPU %d: %v", cpu, p.err)
			continue
		}
		if !slices.Equal(p.affinity, []int{cpu}) {
			t.Errorf("lcore on CPU %d: sched_getaffinity in the task = %v, want exactly [%d]", cpu, p.affinity, cpu)
		}
		if want := fmt.Sprint(cpu); p.procList != want {
			t.Errorf("lcore on CPU %d: /proc/self/task/%d/status Cpus_allowed_list = %q, want %q", cpu, p.tid, p.procList, want)
		}
	}
	// The pinned threads must die with their goroutines rather than return,
	// narrowed, to the runtime's pool.
	for _, p := range probes {
		if p.tid == os.Getpid() {
			t.Errorf("an lcore was pinned on the process's main thread")
		}
		path := fmt.Sprintf("/proc/self/task/%d", p.tid)
		testwait.For(t, "pinned thread "+path+" to exit", func() bool {
			_, err := os.Stat(path)
			return errors.Is(err, os.ErrNotExist)
		})
	}
	if after := allowedCPUs(t); !slices.Equal(after, before) {
		t.Errorf("allowed CPUs changed from %v to %v", before, after)
	}
}

func TestNewRunnerRefuses(t *testing.T) {
	allowed := allowedCPUs(t)
	notAllowed := -1
	for c := 0; c < MaxCPUs; c++ {
		if !slices.Contains(allowed, c) {
			notAllowed = c
			break
		}
	}
	if notAllowed < 0 {
		t.Fatal("every possible CPU is allowed; cannot test refusal of a disallowed one")
	}
	cpu := allowed[0]
	task := func() []Task { return []Task{&idleTask{name: "idle"}} }
	dup := &idleTask{name: "idle"}
	tests := []struct {
		name    string
		opts    RunnerOptions
		lcores  []LcoreConfig
		mention string
	}{
		{"empty group", RunnerOptions{}, nil, "no lcores"},
		{"CPU out of range", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: 4096, Tasks: task()}}, "CPU 4096 is out of range"},
		{"negative CPU", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: -1, Tasks: task()}}, "CPU -1 is out of range"},
		{"CPU not allowed", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: notAllowed, Tasks: task()}},
			fmt.Sprintf("CPU %d is not in this process's allowed CPUs %s", notAllowed, FormatCoreList(allowed))},
		{"shared CPU", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: cpu, Tasks: task()}, {ID: 1, CPU: cpu, Tasks: task()}},
			fmt.Sprintf("lcores 0 and 1 are both on CPU %d", cpu)},
		{"duplicate id", RunnerOptions{AllowSharedCPU: true}, []LcoreConfig{{ID: 3, CPU: cpu, Tasks: task()}, {ID: 3, CPU: cpu, Tasks: task()}},
			"lcore 3 is configured twice"},
		{"twice the same task", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: cpu, Tasks: []Task{dup, dup}}}, "already polls task \"idle\""},
		{"nil task", RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: cpu, Tasks: []Task{nil}}}, "task 0 is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRunner(tt.opts, tt.lcores)
			if err == nil {
				t.Fatal("NewRunner succeeded")
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestSharedCPUWhenAllowed(t *testing.T) {
	cpu := allowedCPUs(t)[0]
	a, b := newPinProbe("a"), newPinProbe("b")
	r, err := NewRunner(RunnerOptions{AllowSharedCPU: true, Idle: IdleYield}, []LcoreConfig{
		{ID: 0, CPU: cpu, Tasks: []Task{a}},
		{ID: 1, CPU: cpu, Tasks: []Task{b}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-a.done
	<-b.done
	if err := stopWithin(t, r); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*pinProbe{a, b} {
		if p.err != nil || !slices.Equal(p.affinity, []int{cpu}) {
			t.Errorf("task %s: affinity %v, err %v; want [%d]", p.name, p.affinity, p.err, cpu)
		}
	}
	if a.tid == b.tid {
		t.Errorf("both lcores ran on thread %d", a.tid)
	}
}

func TestLcoreCounters(t *testing.T) {
	const busyPolls = 100
	// The worker does work busyPolls times (1, 2, 3, 1, 2, 3, ...) and then
	// idles; the idler never has work.
	polls := 0
	wantWork := uint64(0)
	for i := range busyPolls {
		wantWork += uint64(i%3 + 1)
	}
	idleSeen := make(chan struct{})
	worker := &funcTask{name: "worker", poll: func() int {
		polls++
		if polls <= busyPolls {
			return (polls-1)%3 + 1
		}
		if polls == busyPolls+50 {
			close(idleSeen)
		}
		return 0
	}}
	idler := &idleTask{name: "idler"}
	r, err := NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 7, CPU: allowedCPUs(t)[0], Tasks: []Task{worker, idler}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-idleSeen
	if err := stopWithin(t, r); err != nil {
		t.Fatal(err)
	}
	st := r.Stats()[0]
	if st.Lcore != 7 || len(st.Tasks) != 2 || st.Tasks[0].Name != "worker" || st.Tasks[1].Name != "idler" {
		t.Fatalf("stats identify the wrong lcore or tasks: %+v", st)
	}
	w, i := st.Tasks[0], st.Tasks[1]
	if w.BusyPolls != busyPolls || w.Work != wantWork {
		t.Errorf("worker: busy polls %d, work %d; want %d and %d", w.BusyPolls, w.Work, busyPolls, wantWork)
	}
	if total := w.BusyPolls + w.IdlePolls; total != uint64(polls) {
		t.Errorf("worker: %d busy + %d idle polls, but Poll ran %d times", w.BusyPolls, w.IdlePolls, polls)
	}
	if i.BusyPolls != 0 || i.Work != 0 || i.BusyTime != 0 || i.IdlePolls != i.polls() {
		t.Errorf("idler: %+v, polled %d times", i, idler.polls.Load())
	}
	if st.BusyRounds != busyPolls || st.Rounds() != uint64(polls) {
		t.Errorf("lcore: %d busy of %d rounds; want %d of %d", st.BusyRounds, st.Rounds(), busyPolls, polls)
	}
	if w.BusyTime <= 0 || st.BusyTime < w.BusyTime || st.IdleTime <= 0 {
		t.Errorf("times: worker busy %v, lcore busy %v idle %v; want all > 0 and lcore busy >= worker busy", w.BusyTime, st.BusyTime, st.IdleTime)
	}
	if f := st.BusyFraction(); f <= 0 || f >= 1 {
		t.Errorf("BusyFraction = %v, want in (0, 1)", f)
	}
}

// polls is the idle poll count as TaskStats reports it, for comparison with
// what idleTask itself counted.
func (s TaskStats) polls() uint64 { return s.BusyPolls + s.IdlePolls }

// TestRoundTimeAccounting drives round directly with a fake clock that
// advances 10 ns per reading, so every attribution is exact.
func TestRoundTimeAccounting(t *testing.T) {
	work := []int{0, 5, 0} // the middle task is busy
	var tasks []Task
	for i := range work {
		tasks = append(tasks, &funcTask{name: fmt.Sprint("t", i), poll: func() int { return work[i] }})
	}
	l, err := newLcore(LcoreConfig{ID: 0, CPU: 0, Tasks: tasks})
	if err != nil {
		t.Fatal(err)
	}
	var now int64
	l.clock = func() int64 { now += 10; return now }
	l.last = l.clock() // 10

	// Round 1: t1 is busy, read at 20 and charged 20-10; the round ends with
	// an idle poll, so the clock is read again (30).
	if !l.round() {
		t.Fatal("round with a busy task reported idle")
	}
	// Round 2: nothing to do; one reading (40).
	work[1] = 0
	if l.round() {
		t.Fatal("idle round reported busy")
	}
	l.publish()
	st := l.Stats()
	if got := st.Tasks[1]; got.BusyPolls != 1 || got.IdlePolls != 1 || got.Work != 5 || got.BusyTime != 10 {
		t.Errorf("busy task: %+v, want 1 busy, 1 idle, work 5, 10ns", got)
	}
	if st.Tasks[0].BusyTime != 0 || st.Tasks[2].BusyTime != 0 {
		t.Errorf("idle tasks were charged time: %v, %v", st.Tasks[0].BusyTime, st.Tasks[2].BusyTime)
	}
	if st.BusyRounds != 1 || st.IdleRounds != 1 || st.BusyTime != 20 || st.IdleTime != 10 {
		t.Errorf("lcore: %+v, want 1 busy round of 20ns and 1 idle round of 10ns", st)
	}
	if now != 40 {
		t.Errorf("clock read %d times over two rounds, want 4 (start, busy poll, two round ends)", now/10)
	}
}

func TestStatsSnapshotsAreConsistent(t *testing.T) {
	a, b := &idleTask{name: "a"}, &idleTask{name: "b"}
	busy := &funcTask{name: "busy", poll: func() int { return 1 }}
	r, err := NewRunner(RunnerOptions{Idle: IdleYield}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{a, busy, b}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := r.Lcores()[0]
	var prev uint64
	deadline := time.Now().Add(10 * time.Second)
	for checks := 0; checks < 2000 || prev < 100*publishEvery; checks++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d rounds published after %d snapshots", prev, checks)
		}
		st := l.Stats()
		rounds := st.Rounds()
		// Every task is polled once per round, so a torn snapshot shows up
		// as a task whose polls differ from the round count.
		for _, ts := range st.Tasks {
			if ts.polls() != rounds {
				t.Fatalf("torn snapshot: task %s has %d polls in %d rounds", ts.Name, ts.polls(), rounds)
			}
		}
		if st.BusyRounds != rounds || st.Tasks[1].Work != rounds {
			t.Fatalf("torn snapshot: %d busy rounds, work %d, %d rounds", st.BusyRounds, st.Tasks[1].Work, rounds)
		}
		if rounds < prev {
			t.Fatalf("rounds went backwards: %d after %d", rounds, prev)
		}
		prev = rounds
	}
	if err := stopWithin(t, r); err != nil {
		t.Fatal(err)
	}
}

func TestStopIsPromptAndIdempotent(t *testing.T) {
	task := &idleTask{name: "idle"}
	r, err := NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{task}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil { // before Start: nothing to stop
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "stopped before it was started") {
		t.Fatalf("Start after Stop: err = %v, want the runner refusing as stopped", err)
	}

	r, err = NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{task}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "already started") {
		t.Errorf("second Start: err = %v, want the runner refusing as already started", err)
	}
	testwait.For(t, "the lcore to poll", func() bool { return task.polls.Load() > 0 })
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := stopWithin(t, r); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	stopped := task.polls.Load()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	if task.polls.Load() != stopped {
		t.Error("the task was polled after Stop returned")
	}
	select {
	case <-r.Lcores()[0].Done():
	default:
		t.Error("Done not closed after Stop")
	}
}

func TestContextCancelStops(t *testing.T) {
	task := &idleTask{name: "idle"}
	r, err := NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{task}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the lcore to poll", func() bool { return task.polls.Load() > 0 })
	cancel()
	select {
	case <-r.Lcores()[0].Done():
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the context did not stop the lcore")
	}
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestTaskPanicStopsOnlyItsLcore(t *testing.T) {
	cpus := allowedCPUs(t)
	cpuB := cpus[len(cpus)-1]
	polls := 0
	boom := &funcTask{name: "boom", poll: func() int {
		polls++
		if polls == 5 {
			panic("kaboom")
		}
		return 1
	}}
	healthy := &idleTask{name: "healthy"}
	r, err := NewRunner(RunnerOptions{AllowSharedCPU: true, Idle: IdleYield}, []LcoreConfig{
		{ID: 0, CPU: cpus[0], Tasks: []Task{&idleTask{name: "before"}, boom}},
		{ID: 1, CPU: cpuB, Tasks: []Task{healthy}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	crashed, survivor := r.Lcores()[0], r.Lcores()[1]
	// Failed tells at once, while the group still runs.
	var pe *TaskPanicError
	select {
	case err := <-r.Failed():
		if !errors.As(err, &pe) || pe.Task != "boom" {
			t.Fatalf("Failed delivered %v, want the panic of task boom", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Failed delivered nothing after a task panicked")
	}
	<-crashed.Done()
	if !errors.As(crashed.Err(), &pe) {
		t.Fatalf("crashed lcore Err() = %v, want a *TaskPanicError", crashed.Err())
	}
	if pe.Task != "boom" || pe.Lcore != 0 || pe.CPU != cpus[0] || pe.Value != "kaboom" {
		t.Errorf("panic error = %+v", pe)
	}
	if !strings.Contains(pe.Error(), `task "boom" panicked: kaboom`) || !strings.Contains(string(pe.Stack), "TestTaskPanicStopsOnlyItsLcore") {
		t.Errorf("panic error %q lacks the task name or the stack lacks the panicking function:\n%s", pe, pe.Stack)
	}
	// The other lcore keeps polling.
	seen := healthy.polls.Load()
	testwait.For(t, "the surviving lcore to keep polling", func() bool { return healthy.polls.Load() > seen })
	if survivor.Err() != nil {
		t.Fatalf("surviving lcore failed: %v", survivor.Err())
	}
	// The crashed lcore's last counters were published: four busy polls.
	if st := crashed.Stats(); st.Tasks[1].BusyPolls != 4 || st.Tasks[1].Work != 4 {
		t.Errorf("crashed lcore stats: %+v, want 4 busy polls of boom", st.Tasks[1])
	}
	err = stopWithin(t, r)
	if !errors.As(err, &pe) || pe.Task != "boom" {
		t.Errorf("Stop() = %v, want the task panic", err)
	}
	select {
	case err := <-r.Failed():
		t.Errorf("Failed delivered a second error %v for one crashed lcore", err)
	default:
	}
}

func TestTaskGoexitIsReported(t *testing.T) {
	quitter := &funcTask{name: "quitter", poll: func() int { runtime.Goexit(); return 0 }}
	r, err := NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 2, CPU: allowedCPUs(t)[0], Tasks: []Task{quitter}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	err = r.Wait()
	var pe *TaskPanicError
	if !errors.As(err, &pe) || pe.Task != "quitter" || pe.Value != nil || !strings.Contains(err.Error(), "Goexit") {
		t.Errorf("Wait() = %v, want a Goexit report naming the task", err)
	}
}

func TestPanicValueErrorUnwraps(t *testing.T) {
	sentinel := errors.New("ring corrupted")
	bad := &funcTask{name: "bad", poll: func() int { panic(fmt.Errorf("rx: %w", sentinel)) }}
	r, err := NewRunner(RunnerOptions{}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{bad}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(); !errors.Is(err, sentinel) {
		t.Errorf("Wait() = %v, want it to wrap the panic's error", err)
	}
}

// TestPinFailureStartsNothing makes one lcore's pinning fail after
// validation (as a CPU going offline between NewRunner and Start would) and
// checks that Start reports it and that no lcore polled.
func TestPinFailureStartsNothing(t *testing.T) {
	cpu := allowedCPUs(t)[0]
	good := &idleTask{name: "good"}
	r, err := NewRunner(RunnerOptions{AllowSharedCPU: true}, []LcoreConfig{
		{ID: 0, CPU: cpu, Tasks: []Task{good}},
		{ID: 1, CPU: cpu, Tasks: []Task{&idleTask{name: "doomed"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Lcores()[1].cpu = MaxCPUs - 1 // no such CPU here: sched_setaffinity fails
	err = r.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("lcore 1: pin thread to CPU %d", MaxCPUs-1)) {
		t.Fatalf("Start() = %v, want a pinning error for lcore 1", err)
	}
	if n := good.polls.Load(); n != 0 {
		t.Errorf("the healthy lcore polled %d times although the group failed to start", n)
	}
	for _, l := range r.Lcores() {
		select {
		case <-l.Done():
		default:
			t.Errorf("lcore %d still running after a failed Start", l.ID())
		}
	}
}

func newBenchLcore(tb testing.TB, tasks []Task) *Lcore {
	l, err := newLcore(LcoreConfig{ID: 0, CPU: 0, Tasks: tasks})
	if err != nil {
		tb.Fatal(err)
	}
	l.last = l.clock()
	return l
}

func TestRoundDoesNotAllocate(t *testing.T) {
	l := newBenchLcore(t, []Task{&idleTask{name: "a"}, &funcTask{name: "b", poll: func() int { return 32 }}})
	// 1000 rounds include publishing, which happens every publishEvery.
	if allocs := testing.AllocsPerRun(1000, func() { l.round() }); allocs != 0 {
		t.Errorf("a poll round allocates %v times", allocs)
	}
}

// nopTask is the cheapest possible task, so the benchmarks measure the
// loop's own cost.
type nopTask int

func (nopTask) Name() string { return "nop" }
func (t nopTask) Poll() int  { return int(t) }
func nopTasks(n, work int) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = nopTask(work)
	}
	return tasks
}

// BenchmarkLcoreRound measures one round of the poll loop over n tasks that
// do nothing: its ns/op is the framework's overhead per round, and the
// ns/task metric that overhead divided by the task count. "bare" is the
// same polls without any accounting, for comparison.
func BenchmarkLcoreRound(b *testing.B) {
	for _, mode := range []struct {
		name string
		work int
	}{{"idle", 0}, {"busy", 32}} {
		for _, n := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/tasks=%d", mode.name, n), func(b *testing.B) {
				l := newBenchLcore(b, nopTasks(n, mode.work))
				b.ReportAllocs()
				for b.Loop() {
					l.round()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/task")
			})
		}
	}
	b.Run("bare/tasks=4", func(b *testing.B) {
		tasks := nopTasks(4, 0)
		sink := 0
		b.ReportAllocs()
		for b.Loop() {
			for _, t := range tasks {
				sink += t.Poll()
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/4, "ns/task")
		_ = sink
	})
}

// releasedTask records a poll after its owner released it: the bug
// RemoveTask exists to rule out (tearing a port down while its lcore may
// still poll it).
type releasedTask struct {
	idleTask
	released  atomic.Bool
	latePolls atomic.Uint64
}

func (t *releasedTask) Poll() int {
	if t.released.Load() {
		t.latePolls.Add(1)
	}
	return t.idleTask.Poll()
}

// TestTasksComeAndGoWhilePolling: tasks are added to and removed from a
// running lcore many times. Each added task gets polled; once RemoveTask
// returns, the task is never polled again; the steady task is polled
// throughout and the lcore never stops.
func TestTasksComeAndGoWhilePolling(t *testing.T) {
	steady := &idleTask{name: "steady"}
	run, err := NewRunner(RunnerOptions{Idle: IdleYield}, []LcoreConfig{{ID: 0, CPU: allowedCPUs(t)[0], Tasks: []Task{steady}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer stopWithin(t, run)
	l := run.Lcores()[0]
	var gone []*releasedTask
	for i := range 100 {
		task := &releasedTask{idleTask: idleTask{name: fmt.Sprintf("guest-%d", i)}}
		if err := l.AddTask(task); err != nil {
			t.Fatal(err)
		}
		before := steady.polls.Load()
		testwait.For(t, "the added task to be polled", func() bool { return task.polls.Load() > 0 })
		if err := l.RemoveTask(task); err != nil {
			t.Fatal(err)
		}
		task.released.Store(true)
		gone = append(gone, task)
		if steady.polls.Load() == before {
			testwait.For(t, "the steady task to be polled", func() bool { return steady.polls.Load() > before })
		}
	}
	// A few more rounds: any late poll would show now.
	mark := steady.polls.Load()
	testwait.For(t, "more rounds", func() bool { return steady.polls.Load() > mark+100 })
	for _, task := range gone {
		if n := task.latePolls.Load(); n != 0 {
			t.Fatalf("task %s polled %d times after RemoveTask returned", task.name, n)
		}
	}
	if st := l.Stats(); len(st.Tasks) != 1 || st.Tasks[0].Name != "steady" {
		t.Fatalf("tasks after the churn: %+v", st.Tasks)
	}
	select {
	case err := <-run.Failed():
		t.Fatalf("lcore failed: %v", err)
	default:
	}
}

// TestTaskChangesRefused: a task added twice, a task removed that the
// lcore does not have and a nil task are errors naming the problem; the
// same holds before the lcore starts and after it stopped, when the change
// is made without the polling goroutine.
func TestTaskChangesRefused(t *testing.T) {
	run, err := NewRunner(RunnerOptions{Idle: IdleYield}, []LcoreConfig{{ID: 7, CPU: allowedCPUs(t)[0]}})
	if err != nil {
		t.Fatalf("an lcore without tasks (they come at runtime): %v", err)
	}
	l := run.Lcores()[0]
	task := &idleTask{name: "vm1"}
	check := func(when string) {
		t.Helper()
		if err := l.AddTask(task); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		for _, c := range []struct {
			what    string
			err     error
			mention string
		}{
			{"add twice", l.AddTask(task), `lcore 7 already polls task "vm1"`},
			{"remove unknown", l.RemoveTask(&idleTask{name: "other"}), "lcore 7 does not poll that task"},
			{"add nil", l.AddTask(nil), "lcore 7: adding a nil task"},
		} {
			if c.err == nil || !strings.Contains(c.err.Error(), c.mention) {
				t.Errorf("%s, %s: error %v, want it to mention %q", when, c.what, c.err, c.mention)
			}
		}
		if err := l.RemoveTask(task); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	check("before start")
	if err := run.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("while polling")
	if err := stopWithin(t, run); err != nil {
		t.Fatal(err)
	}
	check("after stop")
}

// BenchmarkIdleRound measures how often an idle lcore polls under each
// idle policy: ns/op is the time from one idle round to the next on a
// running lcore (its thread pinned, as in production), the longest a
// frame arriving on an idle port waits before a poll sees it.
// cpu-ns/op is the process's CPU time (user+system, every thread) over
// the same rounds: an idle policy that makes other threads work shows
// there and not in ns/op.
func BenchmarkIdleRound(b *testing.B) {
	for _, policy := range []struct {
		name string
		idle IdlePolicy
	}{{"spin", IdleSpin}, {"yield", IdleYield}} {
		b.Run(policy.name, func(b *testing.B) {
			task := &idleTask{name: "idle"}
			cpus, err := AllowedCPUs()
			if err != nil {
				b.Fatal(err)
			}
			run, err := NewRunner(RunnerOptions{Idle: policy.idle}, []LcoreConfig{{ID: 0, CPU: cpus[len(cpus)-1], Tasks: []Task{task}}})
			if err != nil {
				b.Fatal(err)
			}
			if err := run.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer run.Stop()
			testwait.For(b, "the lcore to poll", func() bool { return task.polls.Load() > 0 })
			cpuBefore := processCPU(b)
			b.ResetTimer()
			for start := task.polls.Load(); task.polls.Load()-start < uint64(b.N); {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64((processCPU(b)-cpuBefore).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the CPU time all of the process's threads have used.
func processCPU(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestGroupReservesProcs: a running group holds one P per lcore, so it
// raises GOMAXPROCS by its lcore count while it runs, and the value from
// before comes back once its lcores have exited, also when two groups
// overlap.
func TestGroupReservesProcs(t *testing.T) {
	cpus := allowedCPUs(t)
	// Groups of earlier tests stopped through their context may still be
	// exiting, and their release would move GOMAXPROCS under this test.
	testwait.For(t, "earlier tests' lcore groups to exit", func() bool {
		procs.mu.Lock()
		defer procs.mu.Unlock()
		return procs.reserved == 0
	})
	base := runtime.GOMAXPROCS(0)
	start := func() *Runner {
		r, err := NewRunner(RunnerOptions{Idle: IdleYield}, []LcoreConfig{{ID: 0, CPU: cpus[0], Tasks: []Task{&idleTask{name: "idle"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := start()
	if got := runtime.GOMAXPROCS(0); got != base+1 {
		t.Errorf("one lcore running: GOMAXPROCS %d, want %d", got, base+1)
	}
	b := start()
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Errorf("two lcores in two groups running: GOMAXPROCS %d, want %d", got, base+2)
	}
	if err := stopWithin(t, a); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "GOMAXPROCS to drop by the stopped group's lcore", func() bool { return runtime.GOMAXPROCS(0) == base+1 })
	if err := stopWithin(t, b); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "GOMAXPROCS to return to its value", func() bool { return runtime.GOMAXPROCS(0) == base })
}
