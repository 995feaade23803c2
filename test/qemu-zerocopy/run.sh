#!/usr/bin/env bash
# End-to-end test of the zero-copy engine with a real Linux guest: the host
# test (host_test.go, build tag qemuzerocopy) starts `zcnet sim --tap --vhost`
# in a network namespace of its own, so that the simulated 82599's wire is a
# TAP in that namespace, and boots a QEMU/TCG guest whose virtio-net-pci is
# served by zcnet's vhost-user socket. The guest (busybox only, init.sh) has
# a MAC of its own and plain ARP; it pings the namespace, is pinged from it,
# and moves a file each way over TCP with busybox nc, checksummed at both
# ends. Each case then checks zcnet's counters: frames in = delivered +
# counted drops, no IOMMU fault, no copy but for a reason that cannot be
# posted, no receive error in the guest.
#
# This script installs what is missing (root, Debian 12), fetches Debian's
# kernel (shared with test/vfio-qemu's cache), builds zcnet and an initramfs,
# and runs the host test. It fails, never skips, when something is missing.
#
# Environment (all optional):
#   ZCNET_QZ_KERNEL_PKG   kernel package (default: what linux-image-amd64 depends on)
#   ZCNET_QZ_KERNEL_CACHE where extracted kernels live (test/vfio-qemu/work/kernel)
#   ZCNET_QZ_WORK         output folder: initramfs, consoles, zcnet logs (test/qemu-zerocopy/work)
#   ZCNET_QZ_RUN          -run pattern for the host test (all cases), e.g. 'TestQEMUZeroCopy/packed'
#   ZCNET_QZ_MIB          MiB moved each way per case (8)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

kernel_pkg=${ZCNET_QZ_KERNEL_PKG:-}
kcache=${ZCNET_QZ_KERNEL_CACHE:-$repo/test/vfio-qemu/work/kernel}
work=${ZCNET_QZ_WORK:-$here/work}
run_pattern=${ZCNET_QZ_RUN:-.}
mib=${ZCNET_QZ_MIB:-8}

# shellcheck source=SCRIPTDIR/../lib/qemu-guest.sh
. "$here/../lib/qemu-guest.sh"

log() { printf '[qemu-zerocopy] %s\n' "$*" >&2; }
die() { printf '[qemu-zerocopy] FAIL: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: the test creates a network namespace and a TAP, and zcnet maps hugepages"
mkdir -p "$work"
# One run at a time per output folder.
exec 9>"$work/.lock"
flock 9

# --- host packages and hugepages ----------------------------------------------

qemu_guest_ensure_packages
command -v go >/dev/null || die "go is not on PATH; it builds zcnet and the host test"
command -v ip >/dev/null || die "ip is not on PATH (apt-get install iproute2): the test creates a network namespace"
command -v ping >/dev/null || die "ping is not on PATH (apt-get install iputils-ping): the namespace pings the guest"
for tool in gzip flock dpkg; do
	command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts ||
	die "hugetlbfs is not mounted on /dev/hugepages: run 'make hugepages' (zcnet's buffers and the hugetlbfs guest need it)"

# --- guest kernel (same cache as test/vfio-qemu) and modules -----------------

qemu_guest_kernel "$kcache" "$kernel_pkg" ZCNET_QZ_KERNEL_PKG
qemu_guest_modules virtio_pci virtio_net

# --- zcnet and the initramfs -------------------------------------------------

zcnet=$work/zcnet
log "building zcnet"
(cd "$repo" && go build -trimpath -o "$zcnet" ./cmd/zcnet) || die "building cmd/zcnet failed"

qemu_guest_initramfs "$work" ZCNET-QEMU-ZEROCOPY "$here/init.sh"

# --- host test ---------------------------------------------------------------

log "running the host test; logs in $work"
start=$SECONDS
cd "$repo"
ZCNET_QZ_KERNEL=$vmlinuz ZCNET_QZ_INITRD=$initrd ZCNET_QZ_WORK=$work ZCNET_QZ_ZCNET=$zcnet ZCNET_QZ_MIB=$mib \
	go test -tags qemuzerocopy -count=1 -v -timeout 12m -run "$run_pattern" ./test/qemu-zerocopy/ ||
	die "host test failed after $((SECONDS - start))s; consoles and zcnet logs are in $work"
log "PASS after $((SECONDS - start))s (kernel $kver)"
