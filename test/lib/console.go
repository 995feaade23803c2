package lib

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Console is a QEMU process whose serial console is its stdout: every
// line is kept (for the logs a failing test leaves behind) and handed to
// Lines, which a harness reads to follow the guest. A harness that falls
// behind by more lines than Lines buffers loses them from Lines only.
type Console struct {
	Name  string
	Lines chan string

	cmd     *exec.Cmd
	stderr  bytes.Buffer
	mu      sync.Mutex
	console bytes.Buffer
	done    chan error
	over    bool
	out     string
}

// StartConsole starts qemu with args, dying with the test process, and
// follows its console. When the test ends it is killed and its console
// and stderr are written to out-console.log and out-qemu-stderr.log.
func StartConsole(t *testing.T, name, qemu string, args []string, out string, buffered int) *Console {
	t.Helper()
	t.Logf("%s: %s %s", name, qemu, strings.Join(args, " "))
	c := &Console{Name: name, Lines: make(chan string, buffered), done: make(chan error, 1), out: out}
	c.cmd = exec.Command(qemu, args...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.cmd.Stderr = &c.stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer close(c.Lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			c.mu.Lock()
			c.console.WriteString(line + "\n")
			c.mu.Unlock()
			select {
			case c.Lines <- line:
			default: // nobody waits for that many lines
			}
		}
	}()
	go func() {
		<-read
		c.done <- c.cmd.Wait()
	}()
	t.Cleanup(func() {
		c.Kill()
		c.Save()
	})
	return c
}

// Kill kills QEMU (once) and waits until it is gone.
// Pid is the process ID of the command on the console.
func (c *Console) Pid() int { return c.cmd.Process.Pid }

func (c *Console) Kill() {
	if !c.over {
		_ = c.cmd.Process.Kill()
		<-c.done
		c.over = true
	}
}

// Signal sends sig to QEMU.
func (c *Console) Signal(sig os.Signal) error { return c.cmd.Process.Signal(sig) }

// Wait reports whether QEMU exits within d.
func (c *Console) Wait(d time.Duration) bool {
	if c.over {
		return true
	}
	select {
	case <-c.done:
		c.over = true
		return true
	case <-time.After(d):
		return false
	}
}

// Save writes the console and QEMU's stderr so far to the log files.
func (c *Console) Save() {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = os.WriteFile(c.out+"-console.log", c.console.Bytes(), 0o644)
	_ = os.WriteFile(c.out+"-qemu-stderr.log", c.stderr.Bytes(), 0o644)
}

// Fatalf kills QEMU, saves the logs and fails the test with the message,
// the console's last lines and QEMU's stderr.
func (c *Console) Fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	c.Kill()
	c.Save()
	c.mu.Lock()
	console := c.console.String()
	c.mu.Unlock()
	t.Fatalf("%s\n%s console (%s-console.log):\n%s\nQEMU stderr:\n%s", fmt.Sprintf(format, args...),
		c.Name, c.out, Tail(console, 40), c.stderr.String())
}

// Run runs a command and fails the test, with its output, if it fails.
func Run(t *testing.T, args ...string) string {
	t.Helper()
	b, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, b)
	}
	return string(b)
}

// TailFile returns the last n lines of the file at path (or why it could
// not be read).
func TailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return Tail(string(b), n)
}
