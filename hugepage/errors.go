package hugepage

import (
	"errors"
	"fmt"
)

var (
	// ErrNoHugepages means the kernel has too few free hugepages of the
	// requested size. The error returned is a *ShortageError with the details.
	ErrNoHugepages = errors.New("hugepage: not enough free hugepages")
	// ErrPageSizeUnsupported means the requested page size is not one the
	// kernel, the CPU or the hugetlbfs mount offers.
	ErrPageSizeUnsupported = errors.New("hugepage: page size not supported")
)

// ShortageError reports an allocation the hugepage pool could not satisfy,
// with what an operator needs to fix it.
type ShortageError struct {
	// Need is the number of pages the allocation asked for.
	Need uint64
	// Status holds the kernel's counters when the shortage was detected.
	Status PageStatus
	// Err is the system call failure, or nil when the counters showed the
	// shortage before anything was attempted.
	Err error
}

func (e *ShortageError) Error() string {
	s := e.Status
	avail := s.Available()
	if avail >= e.Need {
		// The counters say there is room, yet the kernel refused: the limit
		// lies elsewhere.
		return fmt.Sprintf("hugepage: the kernel refused %d x %s pages although %d are available (%d in the pool): %v; "+
			"check the hugetlb cgroup limit (hugetlb.%s.max), the size= option of the hugetlbfs mount and the NUMA policy",
			e.Need, s.Size, avail, s.Total, e.Err, s.Size.kernelArg()+"B")
	}
	msg := fmt.Sprintf("hugepage: need %d x %s pages but only %d are free (%d in the pool); reserve more with: %s",
		e.Need, s.Size, avail, s.Total, s.Size.ReserveCommand(s.Total+e.Need-avail))
	if e.Err != nil {
		msg += fmt.Sprintf(" (%v)", e.Err)
	}
	return msg
}

// Unwrap lets errors.Is match both ErrNoHugepages and the underlying errno.
func (e *ShortageError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrNoHugepages}
	}
	return []error{ErrNoHugepages, e.Err}
}
