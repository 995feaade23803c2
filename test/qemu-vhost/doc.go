// Package qemuvhost holds the integration test of zcnet's vhost-user back
// end against QEMU and the Linux virtio-net driver. The test itself
// (host_test.go) is built only with the qemuvhost tag, because it needs a
// guest kernel and an initramfs that run.sh prepares: run it with
// `bash test/qemu-vhost/run.sh` (make test-qemu-vhost), not with go test
// alone. guest/ is the program the guest runs.
package qemuvhost
