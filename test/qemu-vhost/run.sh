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

log() { printf '[qemu-vhost] %s\n' "$*" >&2; }
die() { printf '[qemu-vhost] FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$work" "$kcache"
# One run at a time per output folder.
exec 9>"$work/.lock"
flock 9

# --- host packages -----------------------------------------------------------

apt_updated=0
apt_update_once() {
	if [[ $apt_updated == 0 ]]; then
		log "apt-get update"
		apt-get update -qq || die "apt-get update failed; check network access to the Debian mirrors"
		apt_updated=1
	fi
}

ensure_packages() {
	local missing=() p
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	# Only busybox-static runs in an initramfs without a C library.
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
	command -v cpio >/dev/null || missing+=(cpio)
	command -v modinfo >/dev/null || missing+=(kmod)
	((${#missing[@]} == 0)) && return
	[[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}; run as root or: apt-get install -y ${missing[*]}"
	for p in "${missing[@]}"; do
		apt-cache show "$p" >/dev/null 2>&1 || apt_update_once
	done
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
}

ensure_packages
command -v go >/dev/null || die "go is not on PATH; it builds the guest program and the host test"
for tool in gzip flock dpkg; do
	command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

# --- guest kernel (same cache layout as test/vfio-qemu) ------------------------

resolve_kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}

if [[ -z $kernel_pkg ]]; then
	kernel_pkg=$(resolve_kernel_pkg)
	if [[ -z $kernel_pkg ]]; then
		[[ $(id -u) == 0 ]] && apt_update_once
		kernel_pkg=$(resolve_kernel_pkg)
	fi
	[[ -n $kernel_pkg ]] || die "cannot tell which kernel linux-image-amd64 depends on; set ZCNET_QV_KERNEL_PKG"
fi

kroot=$kcache/$kernel_pkg
if ! compgen -G "$kroot/boot/vmlinuz-*" >/dev/null || [[ ! -e $kroot/.complete ]]; then
	log "downloading $kernel_pkg"
	# Extract next to the cache and rename at the end, so that a concurrent
	# test/vfio-qemu run never sees half a kernel.
	tmp=$(mktemp -d "$kcache/.download.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get download "$kernel_pkg" 2>&1 | grep -v 'unsandboxed as root' >&2) ||
		die "apt-get download $kernel_pkg failed"
	deb=$(compgen -G "$tmp/${kernel_pkg}_*.deb" | head -n1) || true
	[[ -n $deb ]] || die "apt-get download left no .deb for $kernel_pkg"
	dpkg -x "$deb" "$tmp/root"
	touch "$tmp/root/.complete"
	rm -rf "$kroot"
	mv "$tmp/root" "$kroot"
	rm -rf "$tmp"
	trap - EXIT
fi
vmlinuz=$(compgen -G "$kroot/boot/vmlinuz-*" | head -n1) || true
[[ -n $vmlinuz ]] || die "$kernel_pkg has no boot/vmlinuz-*; it is not a kernel image package"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kroot/lib/modules/$kver
[[ -d $moddir ]] || die "$kernel_pkg has no modules folder lib/modules/$kver"
log "guest kernel $kver"

# --- kernel modules, in dependency order ------------------------------------

declare -A mod_path=()
while IFS= read -r f; do
	name=${f##*/}
	name=${name%%.ko*}
	mod_path[${name//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

declare -A mod_state=()
mod_order=()
add_module() {
	local m=${1//-/_} dep deps
	case ${mod_state[$m]:-} in
	"done") return ;;
	visiting) die "module dependency cycle through $m" ;;
	esac
	[[ -n ${mod_path[$m]:-} ]] || die "module $m not found in $moddir (built in? renamed?)"
	mod_state[$m]=visiting
	deps=$(modinfo -F depends "${mod_path[$m]}") || die "modinfo failed on ${mod_path[$m]}"
	for dep in ${deps//,/ }; do
		add_module "$dep"
	done
	mod_state[$m]="done"
	mod_order+=("$m")
}
# virtio_pci finds the device, virtio_net drives it; modinfo supplies the
# rest (virtio, virtio_ring, the PCI transport helpers, net_failover, failover).
for m in virtio_pci virtio_net; do
	add_module "$m"
done
log "modules: ${mod_order[*]}"

# --- guest program and initramfs ---------------------------------------------

guest_bin=$work/guest
log "building the guest program"
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$guest_bin" ./test/qemu-vhost/guest) ||
	die "building test/qemu-vhost/guest failed"
! LC_ALL=C grep -qa '/lib64/ld-linux-x86-64' "$guest_bin" ||
	die "$guest_bin is dynamically linked; the guest has no C library (build with CGO_ENABLED=0)"

rootfs=$work/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,modules}
cp /bin/busybox "$rootfs/bin/busybox"
cp "$guest_bin" "$rootfs/guest"
for m in "${mod_order[@]}"; do
	src=${mod_path[$m]}
	case $src in
	*.ko.xz) xz -dc "$src" >"$rootfs/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$src" >"$rootfs/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$src" >"$rootfs/modules/$m.ko" ;;
	*) cp "$src" "$rootfs/modules/$m.ko" ;;
	esac
done
printf '%s\n' "${mod_order[@]}" >"$rootfs/modules/order"
{
	printf '#!/bin/busybox sh\nMARKER=ZCNET-QEMU-VHOST\n'
	cat "$here/init.sh"
} >"$rootfs/init"
chmod 755 "$rootfs/init"
initrd=$work/initramfs.gz
(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 >"$initrd")

# --- host test ---------------------------------------------------------------

log "running the host test (QEMU timeout ${boot_timeout}s per boot); logs in $work"
start=$SECONDS
cd "$repo"
ZCNET_QV_KERNEL=$vmlinuz ZCNET_QV_INITRD=$initrd ZCNET_QV_WORK=$work ZCNET_QV_TIMEOUT=$boot_timeout \
	go test -tags qemuvhost -count=1 -v -timeout 5m -run "$run_pattern" "${goflags[@]}" ./test/qemu-vhost/ ||
	die "host test failed after $((SECONDS - start))s; console and back-end logs are in $work"
log "PASS after $((SECONDS - start))s (kernel $kver)"
