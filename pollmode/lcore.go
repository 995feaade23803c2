package pollmode

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"
	"golang.org/x/sys/unix"
)

// Task is one unit of poll-mode work an lcore runs over and over: typically
// "harvest this RX ring", "drain that virtqueue". Poll must not block; it
// returns how many packets or work items it handled, 0 when there was
// nothing to do. Negative results count as idle.
type Task interface {
	Name() string
	Poll() int
}

// IdlePolicy says what an lcore does after a round in which no task had work.
type IdlePolicy int

const (
	// IdleSpin polls again at once: the lowest latency, and the lcore's CPU
	// is 100% busy whatever the load, as with DPDK.
	IdleSpin IdlePolicy = iota
	// IdleYield offers the CPU to other threads after an idle round
	// (sched_yield): on a CPU the lcore has to itself the call returns at
	// once, and on a shared one (a small machine, the simulator) the
	// kernel runs whatever else is waiting there first. The lcore keeps
	// its goroutine, thread and P throughout.
	//
	// It does not call runtime.Gosched: an lcore's goroutine is locked to
	// its thread, and a locked goroutine that yields to the Go scheduler
	// hands its P to another thread and sleeps until a third hands it
	// back, two futex wake-ups and two context switches per idle round.
	// Measured with one idle lcore (BenchmarkIdleRound): a round every
	// 8.5 us with Gosched, the thread switching burning a second CPU,
	// against one every 0.23 us with sched_yield, on one CPU.
	IdleYield
)

// LcoreConfig describes one lcore: its id (a label, as in DPDK), the CPU its
// thread is pinned to, and the tasks it polls, in order.
type LcoreConfig struct {
	ID    int
	CPU   int
	Tasks []Task
}

// RunnerOptions tune a Runner.
type RunnerOptions struct {
	// AllowSharedCPU lets two lcores of the group pin to the same CPU. DPDK
	// refuses that, and so does the Runner by default: two spinning threads
	// on one CPU halve each other's throughput and add scheduler latency.
	AllowSharedCPU bool
	// Idle is what an lcore does after an idle round.
	Idle IdlePolicy
}

// Runner is a group of lcores started and stopped together.
//
// Each lcore is a goroutine locked to its own OS thread, which is pinned to
// one CPU. It holds one of the runtime's GOMAXPROCS Ps for as long as it
// polls, whatever its idle policy, so while a group runs it raises
// GOMAXPROCS by its number of lcores (see reserveProcs): the rest of the
// program keeps the Ps it had, instead of running only when the scheduler
// preempts an lcore.
type Runner struct {
	lcores []*Lcore
	idle   IdlePolicy

	mu      sync.Mutex
	started bool
	stopped chan struct{} // closed by the first Stop or context cancellation
	stop    sync.Once
	failed  chan error // one slot per lcore: see Failed
}

// NewRunner checks the configuration and prepares the lcores without
// starting them. It refuses an empty group, duplicate lcore ids, lcores
// without tasks, CPUs outside the process's allowed set (sched_getaffinity,
// as narrowed by taskset or a cpuset cgroup) and, unless
// opts.AllowSharedCPU, two lcores on one CPU.
func NewRunner(opts RunnerOptions, lcores []LcoreConfig) (*Runner, error) {
	if len(lcores) == 0 {
		return nil, errors.New("pollmode: no lcores configured")
	}
	allowed, err := AllowedCPUs()
	if err != nil {
		return nil, err
	}
	var allowedSet cpuBitmap
	for _, c := range allowed {
		allowedSet.addRange(c, c)
	}
	r := &Runner{idle: opts.Idle, stopped: make(chan struct{}), failed: make(chan error, len(lcores))}
	lcoreOfID := make(map[int]bool)
	lcoreOnCPU := make(map[int]int)
	for _, cfg := range lcores {
		if lcoreOfID[cfg.ID] {
			return nil, fmt.Errorf("pollmode: lcore %d is configured twice", cfg.ID)
		}
		lcoreOfID[cfg.ID] = true
		if cfg.CPU < 0 || cfg.CPU >= MaxCPUs {
			return nil, fmt.Errorf("lcore %d: CPU %d is out of range: ids go from 0 to %d", cfg.ID, cfg.CPU, MaxCPUs-1)
		}
		if allowedSet[cfg.CPU/64]&(1<<(cfg.CPU%64)) == 0 {
			return nil, fmt.Errorf("lcore %d: CPU %d is not in this process's allowed CPUs %s (see taskset -p and the cpuset cgroup)",
				cfg.ID, cfg.CPU, FormatCoreList(allowed))
		}
		if other, taken := lcoreOnCPU[cfg.CPU]; taken && !opts.AllowSharedCPU {
			return nil, fmt.Errorf("pollmode: lcores %d and %d are both on CPU %d: give each lcore its own CPU or set AllowSharedCPU", other, cfg.ID, cfg.CPU)
		}
		lcoreOnCPU[cfg.CPU] = cfg.ID
		l, err := newLcore(cfg)
		if err != nil {
			return nil, err
		}
		l.failed = r.failed
		r.lcores = append(r.lcores, l)
	}
	return r, nil
}

// AllowedCPUs returns the CPUs this process may run on, ascending, as the
// kernel reports them for the calling thread (sched_getaffinity with pid 0).
// Every thread the Go runtime creates inherits that mask: the runtime spawns
// new threads from a clean template thread whenever the spawning one is
// locked, precisely so that a pinned lcore's mask does not leak into them.
func AllowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("pollmode: reading this process's allowed CPUs: sched_getaffinity: %w", err)
	}
	var cpus []int
	for c := 0; c < MaxCPUs; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// Lcores returns the group's lcores in configuration order.
func (r *Runner) Lcores() []*Lcore { return r.lcores }

// Start launches every lcore, waits until each one's thread is pinned, and
// only then lets them all begin polling. If any lcore cannot be pinned, none
// polls, all are stopped and the error is returned. Cancelling ctx stops the
// group as Stop does. Start can be called once.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("pollmode: already started")
	}
	select {
	case <-r.stopped:
		r.mu.Unlock()
		return errors.New("pollmode: stopped before it was started")
	default:
	}
	r.started = true
	r.mu.Unlock()

	pinned := make(chan error, len(r.lcores))
	begin := make(chan struct{})
	for _, l := range r.lcores {
		go l.run(r.idle, pinned, begin)
	}
	var errs []error
	for range r.lcores {
		if err := <-pinned; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		r.signalStop()
		close(begin)
		_ = r.Wait() // lcores that never polled have nothing to report
		return errors.Join(errs...)
	}
	reserveProcs(len(r.lcores))
	close(begin)
	go func() {
		for _, l := range r.lcores {
			<-l.done
		}
		releaseProcs(len(r.lcores))
	}()
	go func() {
		select {
		case <-ctx.Done():
			r.signalStop()
		case <-r.stopped:
		}
	}()
	return nil
}

// procs counts the Ps reserved by running lcore groups.
var procs struct {
	mu sync.Mutex
	// base is GOMAXPROCS as it was when the first group started; the
	// runtime runs with base+reserved while any group runs.
	base, reserved int
}

// reserveProcs raises GOMAXPROCS by n for n lcores about to poll. Groups
// may start and stop in any order (tests run several at once): the count
// is shared, and GOMAXPROCS returns to its value from before the first
// group when the last one stops. A program that sets GOMAXPROCS itself
// while groups run has it overwritten at the next start or stop.
func reserveProcs(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	if procs.reserved == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.reserved += n
	runtime.GOMAXPROCS(procs.base + procs.reserved)
}

// releaseProcs undoes reserveProcs(n) once those lcores have exited.
func releaseProcs(n int) {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	procs.reserved -= n
	runtime.GOMAXPROCS(procs.base + procs.reserved)
}

// Stop tells every lcore to leave its loop after the round it is in, waits
// for all of them to exit and returns what Wait returns. It is safe to call
// more than once and from several goroutines.
func (r *Runner) Stop() error {
	r.signalStop()
	return r.Wait()
}

func (r *Runner) signalStop() {
	r.stop.Do(func() {
		for _, l := range r.lcores {
			l.stop.Store(true)
		}
		close(r.stopped)
	})
}

// Wait blocks until every started lcore has exited, through Stop, context
// cancellation or a failure, and returns the failures joined: a
// *TaskPanicError for each lcore a task crashed. A failing lcore stops alone;
// the others keep polling until the group is stopped, so a supervisor that
// wants to react at once watches each Lcore's Done.
func (r *Runner) Wait() error {
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	if !started {
		return nil
	}
	var errs []error
	for _, l := range r.lcores {
		<-l.done
		if l.err != nil {
			errs = append(errs, l.err)
		}
	}
	return errors.Join(errs...)
}

// Failed delivers, the moment it happens, the error (a *TaskPanicError) of
// each lcore that stops because a task crashed; the rest of the group keeps
// polling. An application treats it as DPDK treats a crashed lcore: log
// the error and shut down (the data path of that lcore's tasks is dead).
// The channel is never closed; it holds one error per failed lcore until
// read, so a late reader misses nothing.
func (r *Runner) Failed() <-chan error { return r.failed }

// Stats returns a snapshot of every lcore's counters, in configuration
// order.
func (r *Runner) Stats() []LcoreStats {
	out := make([]LcoreStats, len(r.lcores))
	for i, l := range r.lcores {
		out[i] = l.Stats()
	}
	return out
}

// TaskPanicError reports a task that panicked (or called runtime.Goexit) and
// thereby stopped its lcore.
type TaskPanicError struct {
	Lcore, CPU int
	Task       string
	Value      any    // the panic value; nil after runtime.Goexit
	Stack      []byte // the panicking goroutine's stack
}

func (e *TaskPanicError) Error() string {
	if e.Value == nil {
		return fmt.Sprintf("lcore %d on CPU %d: task %q called runtime.Goexit; the lcore stopped", e.Lcore, e.CPU, e.Task)
	}
	return fmt.Sprintf("lcore %d on CPU %d: task %q panicked: %v; the lcore stopped", e.Lcore, e.CPU, e.Task, e.Value)
}

// Unwrap exposes a panic value that is an error.
func (e *TaskPanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// TaskStats are one task's counters.
type TaskStats struct {
	Name      string
	BusyPolls uint64 // polls that returned > 0
	IdlePolls uint64 // polls that returned <= 0
	Work      uint64 // sum of what busy polls returned
	// BusyTime is the time spent in busy polls, measured from the previous
	// clock reading in the same round; see the clock discussion on Lcore.
	BusyTime time.Duration
}

// LcoreStats are one lcore's counters. A round is one pass over all tasks;
// it is busy if any task did work.
type LcoreStats struct {
	Lcore, CPU int
	BusyRounds uint64
	IdleRounds uint64
	BusyTime   time.Duration // wall time of busy rounds
	IdleTime   time.Duration // wall time of idle rounds
	Tasks      []TaskStats
}

// Rounds is the number of rounds run.
func (s LcoreStats) Rounds() uint64 { return s.BusyRounds + s.IdleRounds }

// BusyFraction is the share of polling time spent in busy rounds, the
// figure DPDK's lcore telemetry reports as busy cycles over total cycles.
func (s LcoreStats) BusyFraction() float64 {
	total := s.BusyTime + s.IdleTime
	if total <= 0 {
		return 0
	}
	return float64(s.BusyTime) / float64(total)
}

// publishEvery is how many rounds an lcore runs between publishing its
// counters. The loop counts in plain fields only it touches; publishing costs
// a few locked instructions (atomic stores are XCHG on amd64), so doing it
// every 64th round makes it nearly free while keeping Stats at most 64
// rounds, typically microseconds, behind. The final values are published
// when the lcore exits.
const publishEvery = 64

// Lcore is one pinned polling thread of a Runner.
//
// Clock. Per-task busy time needs timestamps, and on this class of machine
// a monotonic clock read costs 20-70 ns (the vDSO clock_gettime over the
// TSC, more under virtualisation), about as much as polling an empty ring.
// So the loop reads the clock only when it must: once after each poll that
// did work (charging it the time since the previous reading, which includes
// any idle polls just before it in the same round; those are cheap by
// construction) and once at the end of a round whose last poll was idle.
// A fully idle round thus costs one clock read, whatever the number of
// tasks. Reading the TSC directly (RDTSC from assembly) would save the
// vDSO call but needs per-architecture code, frequency calibration and
// invariant-TSC checks, which sub-microsecond accounting does not justify.
// The clock is time.Since on a fixed monotonic epoch: one runtime nanotime
// call, where time.Now also reads the wall clock.
type Lcore struct {
	_ cpu.CacheLinePad

	// Owned by the polling goroutine: no synchronisation, no sharing.
	rounds     uint64
	busyRounds uint64
	busyNanos  int64
	idleNanos  int64
	last       int64 // clock reading that ended the previous round
	current    int   // index of the task being polled, for panic reports
	slots      []*taskSlot
	clock      func() int64

	_ cpu.CacheLinePad

	// Read every round by the polling goroutine, written once by Stop.
	stop atomic.Bool
	// A change of the task list for the polling goroutine to make between
	// two rounds (see AddTask); read every round.
	mail atomic.Pointer[taskChange]

	_ cpu.CacheLinePad

	// Published counters, a seqlock: seq is odd while the lcore writes them.
	seq           atomic.Uint64
	pubBusyRounds atomic.Uint64
	pubIdleRounds atomic.Uint64
	pubBusyNanos  atomic.Int64
	pubIdleNanos  atomic.Int64

	_ cpu.CacheLinePad

	id, cpu int
	done    chan struct{}
	err     error        // set before done is closed
	failed  chan<- error // the Runner's Failed; room for this lcore's error

	// pubSlots is the task list as Stats sees it, replaced (never
	// modified) when the list changes.
	pubSlots atomic.Pointer[[]*taskSlot]
	// changes serialises AddTask and RemoveTask. ctl guards polling and,
	// while the polling goroutine is not in its loop, slots: a change is
	// made directly then, and handed over through mail otherwise.
	changes sync.Mutex
	ctl     sync.Mutex
	polling bool
}

// taskChange asks the polling goroutine to add or remove a task.
type taskChange struct {
	add, remove Task
	done        chan error
}

// taskSlot holds a task and its counters, padded so that no other lcore's
// data shares its cache lines.
type taskSlot struct {
	_    cpu.CacheLinePad
	task Task
	name string

	busyPolls uint64
	idlePolls uint64
	work      uint64
	busyNanos int64

	pubBusyPolls atomic.Uint64
	pubIdlePolls atomic.Uint64
	pubWork      atomic.Uint64
	pubBusyNanos atomic.Int64
	_            cpu.CacheLinePad
}

var clockEpoch = time.Now()

// monotonicNanos is the lcore clock; see Lcore.
func monotonicNanos() int64 { return int64(time.Since(clockEpoch)) }

func newLcore(cfg LcoreConfig) (*Lcore, error) {
	l := &Lcore{
		id:    cfg.ID,
		cpu:   cfg.CPU,
		done:  make(chan struct{}),
		clock: monotonicNanos,
	}
	for i, t := range cfg.Tasks {
		if t == nil {
			return nil, fmt.Errorf("lcore %d: task %d is nil", cfg.ID, i)
		}
		if err := l.change(&taskChange{add: t}); err != nil {
			return nil, err
		}
	}
	l.pubSlots.Store(&l.slots)
	return l, nil
}

// AddTask makes the lcore poll t too, from its next round on, after the
// tasks it has. It returns once t is in the list (the lcore may already
// have polled it). Adding a task twice is an error.
func (l *Lcore) AddTask(t Task) error {
	if t == nil {
		return fmt.Errorf("lcore %d: adding a nil task", l.id)
	}
	return l.post(&taskChange{add: t})
}

// RemoveTask takes t off the lcore and returns once the lcore will never
// poll it again, not even a round in progress: from then on t's resources
// may be released. The other tasks are polled throughout. Removing a task
// the lcore does not have is an error.
func (l *Lcore) RemoveTask(t Task) error {
	return l.post(&taskChange{remove: t})
}

// post makes change c: directly while the polling goroutine is outside
// its loop (not started, or exited), else through the mailbox it reads
// between rounds, waiting for it to be made. Tasks never block, so the
// wait is at most one round.
func (l *Lcore) post(c *taskChange) error {
	l.changes.Lock()
	defer l.changes.Unlock()
	l.ctl.Lock()
	if !l.polling {
		err := l.change(c)
		l.ctl.Unlock()
		return err
	}
	c.done = make(chan error, 1)
	l.mail.Store(c)
	l.ctl.Unlock()
	return <-c.done
}

// takeMail makes the change waiting in the mailbox, if any (ctl held).
func (l *Lcore) takeMail() {
	if c := l.mail.Swap(nil); c != nil {
		c.done <- l.change(c)
	}
}

// change adds or removes one task (ctl held, or the lcore not yet shared).
// The slot list is replaced, not modified, because Stats reads the old one
// concurrently.
func (l *Lcore) change(c *taskChange) error {
	next := make([]*taskSlot, 0, len(l.slots)+1)
	switch {
	case c.add != nil:
		for _, s := range l.slots {
			if s.task == c.add {
				return fmt.Errorf("pollmode: lcore %d already polls task %q", l.id, s.name)
			}
		}
		next = append(append(next, l.slots...), &taskSlot{task: c.add, name: c.add.Name()})
	default:
		for _, s := range l.slots {
			if s.task != c.remove {
				next = append(next, s)
			}
		}
		if len(next) == len(l.slots) {
			return fmt.Errorf("pollmode: lcore %d does not poll that task", l.id)
		}
	}
	l.slots = next
	l.current = 0
	l.pubSlots.Store(&next)
	return nil
}

// ID is the lcore id from its configuration.
func (l *Lcore) ID() int { return l.id }

// CPU is the CPU the lcore's thread is pinned to.
func (l *Lcore) CPU() int { return l.cpu }

// Done is closed when the lcore's goroutine has exited.
func (l *Lcore) Done() <-chan struct{} { return l.done }

// Err returns why the lcore stopped: nil while it runs or after a clean
// stop, a *TaskPanicError if a task crashed it.
func (l *Lcore) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// run is the lcore goroutine. It reports the pinning outcome on pinned, then
// polls once begin is closed, unless the group was stopped meanwhile.
func (l *Lcore) run(idle IdlePolicy, pinned chan<- error, begin <-chan struct{}) {
	// Never unlocked on purpose: a goroutine that exits while locked takes
	// its thread with it, so a thread whose affinity we narrowed is
	// destroyed instead of going back to the runtime's pool.
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// This is the process's main thread, which the runtime cannot
		// destroy: it would park it forever with our narrowed mask, and
		// /proc/<pid>/status and taskset -p (which read the main thread)
		// would report the whole process pinned. Hand over to a fresh
		// goroutine; holding the main thread locked until it has locked
		// its own guarantees it lands on another thread.
		locked := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(locked)
			l.runLocked(idle, pinned, begin)
		}()
		<-locked
		runtime.UnlockOSThread()
		return
	}
	l.runLocked(idle, pinned, begin)
}

// runLocked pins the thread the caller has locked and runs the loop.
func (l *Lcore) runLocked(idle IdlePolicy, pinned chan<- error, begin <-chan struct{}) {
	defer close(l.done)
	if err := pinThread(l.cpu); err != nil {
		pinned <- fmt.Errorf("lcore %d: %w", l.id, err)
		return
	}
	pinned <- nil
	<-begin
	l.loop(idle)
}

// pinThread restricts the calling thread (pid 0 is the caller's thread id,
// not the process) to exactly one CPU and checks the kernel agrees.
func pinThread(cpuID int) error {
	var want unix.CPUSet
	want.Set(cpuID)
	if err := unix.SchedSetaffinity(0, &want); err != nil {
		return fmt.Errorf("pin thread to CPU %d: sched_setaffinity: %w", cpuID, err)
	}
	var got unix.CPUSet
	if err := unix.SchedGetaffinity(0, &got); err != nil {
		return fmt.Errorf("check thread pinning to CPU %d: sched_getaffinity: %w", cpuID, err)
	}
	if got != want {
		return fmt.Errorf("pin thread to CPU %d: kernel kept a wider mask (%d CPUs)", cpuID, got.Count())
	}
	return nil
}

// loop polls until stopped. A panic (or Goexit) in a task ends it and is
// recorded in l.err as a *TaskPanicError; either way the final counters are
// published. The outcome is stored from the deferred function because after
// runtime.Goexit nothing after the call would run.
func (l *Lcore) loop(idle IdlePolicy) {
	l.ctl.Lock()
	l.polling = true
	l.ctl.Unlock()
	finished := false
	defer func() {
		l.ctl.Lock()
		l.polling = false
		l.takeMail() // posted while the loop was ending
		l.ctl.Unlock()
		if !finished {
			v := recover()
			l.err = &TaskPanicError{Lcore: l.id, CPU: l.cpu, Task: l.slots[l.current].name, Value: v, Stack: debug.Stack()}
			if l.failed != nil {
				l.failed <- l.err // never blocks: one slot per lcore
			}
		}
		l.publish()
	}()
	l.last = l.clock()
	yield := idle == IdleYield
	for !l.stop.Load() {
		if l.mail.Load() != nil {
			l.ctl.Lock()
			l.takeMail()
			l.ctl.Unlock()
		}
		if !l.round() && yield {
			// Raw: an ordinary system call would tell the runtime the
			// thread is blocked, and if the kernel runs another thread
			// here for a while, sysmon would hand the lcore's P to
			// another thread and the lcore would have to win it back.
			_, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			// The time spent away is idle: left to the next round it
			// would be charged to that round's first busy poll.
			now := l.clock()
			l.idleNanos += now - l.last
			l.last = now
		}
	}
	finished = true
}

// round polls every task once, accounts for it and reports whether any task
// did work. It allocates nothing.
func (l *Lcore) round() bool {
	start := l.last
	mark := start
	busy, fresh := false, false
	for i, s := range l.slots {
		l.current = i
		n := s.task.Poll()
		if n <= 0 {
			s.idlePolls++
			fresh = false
			continue
		}
		now := l.clock()
		s.busyPolls++
		s.work += uint64(n)
		s.busyNanos += now - mark
		mark = now
		busy, fresh = true, true
	}
	end := mark
	if !fresh {
		end = l.clock()
	}
	l.last = end
	l.rounds++
	if busy {
		l.busyRounds++
		l.busyNanos += end - start
	} else {
		l.idleNanos += end - start
	}
	if l.rounds%publishEvery == 0 {
		l.publish()
	}
	return busy
}

// publish copies the loop's counters where Stats can read them.
func (l *Lcore) publish() {
	l.seq.Add(1)
	l.pubBusyRounds.Store(l.busyRounds)
	l.pubIdleRounds.Store(l.rounds - l.busyRounds)
	l.pubBusyNanos.Store(l.busyNanos)
	l.pubIdleNanos.Store(l.idleNanos)
	for _, s := range l.slots {
		s.pubBusyPolls.Store(s.busyPolls)
		s.pubIdlePolls.Store(s.idlePolls)
		s.pubWork.Store(s.work)
		s.pubBusyNanos.Store(s.busyNanos)
	}
	l.seq.Add(1)
}

// Stats returns a consistent snapshot of the lcore's published counters. It
// is safe to call from any goroutine at any time.
func (l *Lcore) Stats() LcoreStats {
	for {
		slots := *l.pubSlots.Load()
		st := LcoreStats{Lcore: l.id, CPU: l.cpu, Tasks: make([]TaskStats, len(slots))}
		before := l.seq.Load()
		if before%2 == 1 { // the lcore is mid-publish: a few hundred ns
			runtime.Gosched()
			continue
		}
		st.BusyRounds = l.pubBusyRounds.Load()
		st.IdleRounds = l.pubIdleRounds.Load()
		st.BusyTime = time.Duration(l.pubBusyNanos.Load())
		st.IdleTime = time.Duration(l.pubIdleNanos.Load())
		for i, s := range slots {
			st.Tasks[i] = TaskStats{
				Name:      s.name,
				BusyPolls: s.pubBusyPolls.Load(),
				IdlePolls: s.pubIdlePolls.Load(),
				Work:      s.pubWork.Load(),
				BusyTime:  time.Duration(s.pubBusyNanos.Load()),
			}
		}
		if l.seq.Load() == before {
			return st
		}
	}
}
