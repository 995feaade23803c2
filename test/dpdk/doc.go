// Package dpdk holds zcnet's interoperability tests against a real
// third-party vhost-user front end: DPDK's dpdk-testpmd with the
// net_virtio_user driver (Debian package dpdk-dev, DPDK 22.11).
//
// The tests start zcnet's vhost-user back end in-process, in loopback mode
// (every frame the guest sends comes back to it with its MAC addresses
// swapped), point a testpmd process at its socket, let frames circulate for
// a while and compare testpmd's counters with the back end's. The same
// scenarios first run against DPDK's own vhost back end (net_vhost in a
// second testpmd) so that the expectations themselves are known to hold.
//
// Requirements, checked up front with a failure that says what is missing:
// /usr/bin/dpdk-testpmd (apt-get install dpdk-dev), 2 MiB hugepages with
// hugetlbfs mounted (make hugepages), and two CPUs.
//
// The package has no non-test code; this file only documents it.
package dpdk
