// Package qemuzerocopy holds the end-to-end test of the zero-copy engine
// with a real Linux guest: `zcnet sim --tap --vhost` in a network namespace,
// a QEMU/TCG guest as its vhost-user front end, ping and TCP between the
// namespace and the guest, and zcnet's counters checked after each case.
// The test (host_test.go) is built only with the qemuzerocopy tag, because
// it needs a guest kernel, an initramfs and a zcnet binary that run.sh
// prepares: run it with `bash test/qemu-zerocopy/run.sh` (make
// test-qemu-zerocopy), not with go test alone. init.sh is the guest's
// script.
package qemuzerocopy
