// Package engine is zcnet's zero-copy data path: a Channel joins one NIC
// queue pair (a ring.QueuePair) to one virtio queue pair of a guest served
// by vhost/, and moves frames between them with the guest's own buffers on
// the NIC's rings, falling back to copies through host buffers only where
// a frame cannot be placed zero-copy (and counting why). GuestDMA maps a
// guest's memory into the NIC's IOMMU domain as the front end adds it and
// refuses to unmap what a NIC queue may still write.
//
// A Channel is a pollmode.Task: one lcore polls it. The engine reaches the
// NIC only through the ring contract, so it runs unchanged on any NIC
// driver that returns a ring.QueuePair, and on the simulator.
//
// The order that keeps DMA safe when a channel goes away is: stop its NIC
// queues, take every buffer back from them, give the guest's chains back,
// and only then let the guest's memory be unmapped (Close does the first
// three; appliance/ owns the whole teardown).
package engine
