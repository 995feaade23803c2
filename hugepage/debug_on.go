//go:build zcnetdebug

package hugepage

// debugChecks turns on the checks that cost time on the hot path (double
// free detection in every Pool). Built with -tags zcnetdebug.
const debugChecks = true
