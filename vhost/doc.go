// Package vhost is zcnet's vhost-user back end for virtio-net devices.
//
// A front end (QEMU, or DPDK's virtio-user) hands a device's virtqueues and
// the guest memory behind them to zcnet over a unix socket: the vhost-user
// protocol of QEMU's docs/interop/vhost-user.rst. This package
//
//   - speaks that protocol, as the server of a socket or as a client that
//     reconnects after the front end restarts (Serve, Listen, Dial);
//   - maps the memory regions the front end sends and translates guest
//     physical and front-end virtual addresses to host memory, with every
//     guest-supplied address and length checked (MemoryTable);
//   - runs split and packed virtqueues without allocating: popping
//     available chains into caller-provided segment slices and publishing
//     used entries in bursts, suppressing notifications as a polling back
//     end (Virtqueue);
//   - knows virtio-net: feature bits, the virtio-net header, the control
//     virtqueue, and a loopback mode used by tests (NetHeader, Loopback).
//
// The package assumes a little-endian host (amd64, arm64): vhost-user
// messages are host-endian, virtio 1.x rings are little-endian, and the ring
// accessors in ringwords.go (internal/memword) rely on the two being the same.
package vhost
