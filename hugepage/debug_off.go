//go:build !zcnetdebug

package hugepage

// debugChecks is off in normal builds; see debug_on.go.
const debugChecks = false
