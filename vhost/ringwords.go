package vhost

import (
	"sync/atomic"

	"github.com/zcnet/zcnet/internal/memword"
)

// Ring words are shared with the front end's driver in guest memory; they
// are read and written through internal/memword, zcnet's one audited use
// of unsafe for shared memory. The Device unmaps a memory table only while
// holding the data-path lock pollers hold around ring access, so the
// mapping outlives every access.

// aligned4 reports whether b[off] is 4-byte aligned in memory (used ring:
// the spec requires it; avail ring: checked, with a load16+fence fallback).
func aligned4(b []byte, off int) bool { return memword.Aligned4(b, off) }

// load32 atomically loads the little-endian u32 at b[off] (4-byte aligned).
func load32(b []byte, off int) uint32 { return memword.Load32(b, off) }

// store32 atomically stores v at b[off] (4-byte aligned) with release
// semantics: every earlier store is visible before it.
func store32(b []byte, off int, v uint32) { memword.Store32(b, off, v) }

// load16 loads the u16 at b[off] (2-byte aligned) in a single access.
func load16(b []byte, off int) uint16 { return memword.Load16(b, off) }

// store16 stores the u16 at b[off] (2-byte aligned) in a single access.
func store16(b []byte, off int, v uint16) { memword.Store16(b, off, v) }

// fullFence orders every earlier load and store before every later one
// (a locked read-modify-write on amd64, an acquire-release RMW on arm64).
// w is a word private to the caller, so the fence costs no cache-line
// bouncing.
func fullFence(w *uint32) { atomic.AddUint32(w, 0) }

// hostAddr is the virtual address of b's first byte (b not empty), used as
// a number only: to tell whether a faulting address lies in guest memory.
func hostAddr(b []byte) uintptr { return memword.Addr(b) }
