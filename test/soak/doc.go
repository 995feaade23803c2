// Package soak is zcnet's soak test: two guests, each a sim/guest
// virtio-net front end with memfd memory speaking vhost-user over a real
// unix socket, served zero-copy by the `zcnet sim` binary (one simulated
// 82599 port per guest, each process with its own traffic generator and
// verifying sink), echo traffic at the rate the simulator sustains for a
// bounded time while, at random, they reconnect, change their memory table,
// stop and restart rings, and misbehave: garbage descriptors, malformed and
// partial messages, notification descriptors that are not eventfds,
// unsealed memory, and hugetlbfs memory truncated under zcnet mid-traffic.
//
// At the end it accounts for every frame the generators sent, exactly, stage
// by stage (delivered to the sink, dropped under a named counter of zcnet,
// the simulated NIC or the guest, or measured in flight at zcnet's final
// snapshot; only what truncated guest memory took along is inferred,
// within the ring entries it held), checks that zcnet's descriptors, goroutines, resident memory
// and guest memory mappings are the same at the end as after a warm-up,
// that no IOMMU fault was recorded, and prints the figures.
//
// The test (soak_test.go and its neighbours) is built only with the soak
// tag, so `go test ./...` does not run it: use `make soak` (SOAK_DURATION,
// default 10m), which builds bin/zcnet and reserves hugepages first.
package soak
