// Package guest is a test guest for zcnet's vhost-user back end: a
// virtio-net front end in the role QEMU (or DPDK's virtio-user) plays. It
// allocates "guest memory" from a memfd, shares it with the back end over a
// real unix socket (SET_MEM_TABLE with SCM_RIGHTS), negotiates features and
// sets up split virtqueues in the order QEMU 7.2 does, then acts as the
// guest's virtio-net driver: it posts receive buffers, transmits frames
// behind a virtio-net header, collects used buffers and kicks through
// eventfds. It can also misbehave on purpose (descriptors outside its
// memory, loops) for negative tests.
package guest
