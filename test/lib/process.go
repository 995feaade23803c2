package lib

import (
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a program a host test runs beside its QEMU guests (zcnet
// sim in a network namespace): its stderr goes to a log file, it dies
// with the test process, its exit is waited for in the background, and it
// is killed when the test ends if it is still running.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	log  string
	exit chan struct{}
	err  error
}

// StartProcess starts argv with stdout to stdout and stderr to logPath.
func StartProcess(t *testing.T, name, logPath string, stdout io.Writer, argv ...string) *Process {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	p := &Process{Name: name, Cmd: exec.Command(argv[0], argv[1:]...), log: logPath, exit: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = stdout, logFile
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t.Logf("%s", strings.Join(argv, " "))
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.exit)
	}()
	t.Cleanup(func() {
		if !p.HasExited() {
			_ = p.Cmd.Process.Kill()
			<-p.exit
		}
	})
	return p
}

// Exited is closed once the process has exited; Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.exit }

// HasExited reports whether the process has exited.
func (p *Process) HasExited() bool {
	select {
	case <-p.exit:
		return true
	default:
		return false
	}
}

// Err is the process's exit status as exec reports it, once it has exited.
func (p *Process) Err() error {
	<-p.exit
	return p.err
}

// LogTail is the last n lines of the process's log.
func (p *Process) LogTail(n int) string { return TailFile(p.log, n) }

// WaitReady polls ready every 100 ms until it reports true. The test fails
// if the process exits first or within timeout it is still not ready
// (with ready's account of what is missing and the log's tail).
func (p *Process) WaitReady(t *testing.T, timeout time.Duration, ready func() (bool, string)) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; {
		ok, missing := ready()
		if ok {
			return
		}
		select {
		case <-p.exit:
			t.Fatalf("%s exited before it was ready (%v); its log:\n%s", p.Name, p.err, p.LogTail(30))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v (%s); its log:\n%s", p.Name, timeout, missing, p.LogTail(30))
		}
	}
}

// Interrupt sends SIGINT, as an operator would, and waits up to d for the
// process to exit: an exit status other than 0 is a test error, still
// running after d is fatal.
func (p *Process) Interrupt(t *testing.T, d time.Duration) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT to %s: %v", p.Name, err)
	}
	select {
	case <-p.exit:
		if p.err != nil {
			t.Errorf("%s exited with %v after SIGINT; its log:\n%s", p.Name, p.err, p.LogTail(30))
		}
	case <-time.After(d):
		t.Fatalf("%s still running %v after SIGINT", p.Name, d)
	}
}
