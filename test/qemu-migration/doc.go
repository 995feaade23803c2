// Package qemumigration holds the end-to-end test of live migration of a
// guest served zero-copy (issue 15): QEMU/TCG migrates a Linux guest that
// verifies a UDP stream byte for byte from one `zcnet sim --tap` to
// another on the same bridge, and compares the memory that arrived with
// the source's before the destination runs. The test (host_test.go) is built only with
// the qemumigration tag, because it needs a guest kernel, an initramfs and
// binaries that run.sh prepares: run it with `bash test/qemu-migration/run.sh`
// (make test-migration). init.sh is the guest's script; udpstream/ is the
// stream's sender and the guest's verifier.
package qemumigration
