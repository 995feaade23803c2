#!/usr/bin/env bash
# Integration test of zcnet's vhost-user back end with QEMU and the Linux
# virtio-net driver: the host test (host_test.go, build tag qemuvhost) runs
# the back end in server mode with the loopback poller on a pinned lcore and
# boots a QEMU/TCG guest whose virtio-net-pci device uses it; inside the
# guest a static Go program (guest/) sends frames on an AF_PACKET socket and
# checks every echo.
#
# This script installs what is missing (root, Debian 12), fetches Debian's
# kernel (shared with test/vfio-qemu's cache), builds the guest program and
# an initramfs, and runs the host test. It fails, never skips, when
# something is missing.
#
# Environment (all optional):
#   ZCNET_QV_KERNEL_PKG   kernel package (default: what linux-image-amd64 depends on)
#   ZCNET_QV_KERNEL_CACHE where extracted kernels live (test/vfio-qemu/work/kernel)
#   ZCNET_QV_WORK         output folder: initramfs, console and back-end logs (test/qemu-vhost/work)
#   ZCNET_QV_TIMEOUT      seconds each QEMU boot may take before it is killed (75)
#   ZCNET_QV_RUN          -run pattern for the host test (all variants)
#   ZCNET_QV_GOFLAGS      extra go test flags (e.g. -race)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

kernel_pkg=${ZCNET_QV_KERNEL_PKG:-}
kcache=${ZCNET_QV_KERNEL_CACHE:-$repo/test/vfio-qemu/work/kernel}
work=${ZCNET_QV_WORK:-$here/work}
boot_timeout=${ZCNET_QV_TIMEOUT:-75}
run_pattern=${ZCNET_QV_RUN:-.}
read -r -a goflags <<<"${ZCNET_QV_GOFLAGS:-}"

# shellcheck source=SCRIPTDIR/../lib/qemu-guest.sh
. "$here/../lib/qemu-guest.sh"

log() { printf '[qemu-vhost] %s\n' "$*" >&2; }
die() { printf '[qemu-vhost] FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$work"
# One run at a time per output folder.
exec 9>"$work/.lock"
flock 9

# --- host packages -----------------------------------------------------------

qemu_guest_ensure_packages
command -v go >/dev/null || die "go is not on PATH; it builds the guest program and the host test"
for tool in gzip flock dpkg; do
	command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

# --- guest kernel (same cache as test/vfio-qemu) and modules ------------------

qemu_guest_kernel "$kcache" "$kernel_pkg" ZCNET_QV_KERNEL_PKG
# virtio_pci finds the device, virtio_net drives it; modinfo supplies the
# rest (virtio, virtio_ring, the PCI transport helpers, net_failover, failover).
qemu_guest_modules virtio_pci virtio_net

# --- guest program and initramfs ---------------------------------------------

guest_bin=$work/guest
log "building the guest program"
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$guest_bin" ./test/qemu-vhost/guest) ||
	die "building test/qemu-vhost/guest failed"
qemu_guest_check_static "$guest_bin"

qemu_guest_initramfs "$work" ZCNET-QEMU-VHOST "$here/init.sh" "$guest_bin"

# --- host test ---------------------------------------------------------------

log "running the host test (QEMU timeout ${boot_timeout}s per boot); logs in $work"
start=$SECONDS
cd "$repo"
ZCNET_QV_KERNEL=$vmlinuz ZCNET_QV_INITRD=$initrd ZCNET_QV_WORK=$work ZCNET_QV_TIMEOUT=$boot_timeout \
	go test -tags qemuvhost -count=1 -v -timeout 5m -run "$run_pattern" "${goflags[@]}" ./test/qemu-vhost/ ||
	die "host test failed after $((SECONDS - start))s; console and back-end logs are in $work"
log "PASS after $((SECONDS - start))s (kernel $kver)"
