// Package pollmode is zcnet's poll-mode runtime, as DPDK's EAL is DPDK's:
// lcores (goroutines locked to OS threads pinned to one CPU each) that call
// their tasks' Poll over and over, never blocking and never sleeping in the
// kernel, and the DPDK-style core lists ("2-3", "(0-3)@1") that say which
// CPUs they run on.
//
// Tasks come and go while an lcore runs (Lcore.AddTask, Lcore.RemoveTask):
// the change is taken between two rounds of polls, so the other tasks of
// the lcore are not paused. A task that panics stops its lcore, which
// reports the panic (TaskPanicError) through Runner.Failed; the other
// lcores go on.
//
// The package knows nothing of NICs or guests: the zero-copy engine
// (engine/), the forwarder (fwd/) and the test guests are all just Tasks.
package pollmode
