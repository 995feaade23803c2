// Package memfault contains memory faults on memory another process
// controls.
//
// Guest memory is a file the vhost-user front end shares with zcnet. The
// front end can take pages away under us (ftruncate a hugetlbfs file, or
// a memfd sealing could not protect), and the next access then raises
// SIGBUS, which the Go runtime turns into a fatal error for the whole
// process, every guest and NIC with it. runtime/debug.SetPanicOnFault
// makes such a fault an ordinary panic in the goroutine that touched the
// memory instead; Guard sets it and recognises the panic, so the caller
// can stop using the memory that went away and carry on with the rest.
package memfault

import (
	"fmt"
	"runtime/debug"
)

// Fault is a memory access that faulted: Addr is the faulting address.
type Fault struct {
	Addr uintptr
	// Err is the runtime's description ("unexpected fault address ...").
	Err error
}

func (f *Fault) Error() string {
	return fmt.Sprintf("memory fault at %#x: %v", f.Addr, f.Err)
}

func (f *Fault) Unwrap() error { return f.Err }

// addrError is what the runtime panics with after a fault under
// SetPanicOnFault (a runtime.Error that also reports the address).
type addrError interface {
	error
	Addr() uintptr
}

// FromPanic reports whether v, a value recovered from a panic, is a memory
// fault, and which. A nil dereference is not one (the runtime reports
// those without an address): it is a bug, not memory that went away.
func FromPanic(v any) (*Fault, bool) {
	e, ok := v.(addrError)
	if !ok {
		return nil, false
	}
	return &Fault{Addr: e.Addr(), Err: e}, true
}

// Enable makes memory faults in the calling goroutine panic (see the
// package comment) and returns the previous setting, to be given back to
// Restore when the guarded code is done. The setting belongs to the
// goroutine, so a guard must enable it on the goroutine that touches the
// memory.
func Enable() (previous bool) { return debug.SetPanicOnFault(true) }

// Restore puts back the setting Enable returned.
func Restore(previous bool) { debug.SetPanicOnFault(previous) }
