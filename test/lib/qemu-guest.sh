# shellcheck shell=bash
# Shared host-side steps of the QEMU harnesses (test/vfio-qemu/run.sh and
# test/qemu-vhost/run.sh): host packages, the Debian guest kernel, kernel
# modules in load order, and a busybox initramfs. Source it; it runs nothing
# by itself.
#
# The sourcing script must define log MESSAGE and die MESSAGE (die exits), so
# that every line keeps the harness's own prefix, and run under set -euo
# pipefail. Results come back in global variables, named where each function
# is defined.

qemu_guest_apt_updated=0

# qemu_guest_apt_update_once runs apt-get update the first time it is called
# and does nothing afterwards.
qemu_guest_apt_update_once() {
	if [[ $qemu_guest_apt_updated == 0 ]]; then
		log "apt-get update"
		apt-get update -qq || die "apt-get update failed; check network access to the Debian mirrors"
		qemu_guest_apt_updated=1
	fi
}

# qemu_guest_ensure_packages installs what booting a guest needs: QEMU,
# busybox-static, cpio and kmod (modinfo). Without root it only says what to
# install.
qemu_guest_ensure_packages() {
	local missing=() p
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	# busybox (dynamic) and busybox-static both install /bin/busybox; only
	# the static one runs in an initramfs without a C library.
	dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
	command -v cpio >/dev/null || missing+=(cpio)
	command -v modinfo >/dev/null || missing+=(kmod)
	((${#missing[@]} == 0)) && return
	[[ $(id -u) == 0 ]] || die "missing packages ${missing[*]}; run as root or: apt-get install -y ${missing[*]}"
	for p in "${missing[@]}"; do
		apt-cache show "$p" >/dev/null 2>&1 || qemu_guest_apt_update_once
	done
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
}

# qemu_guest_resolve_kernel_pkg prints the versioned image package
# linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64): that is the
# stock Debian 12 kernel, signed, and it ships both vmlinuz and the modules.
qemu_guest_resolve_kernel_pkg() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}

# qemu_guest_kernel CACHE PKG PKG_VARIABLE makes sure the kernel package PKG
# (empty: the one linux-image-amd64 depends on) is extracted in CACHE/PKG,
# downloading it the first time. PKG_VARIABLE names the environment variable
# that sets PKG, for the error message. It sets:
#   kernel_pkg  the package
#   vmlinuz     path of the kernel image
#   kver        kernel release (lib/modules/KVER)
#   moddir      the kernel's modules folder
qemu_guest_kernel() {
	local kcache=$1 pkg_var=$3 kroot tmp deb
	kernel_pkg=$2
	if [[ -z $kernel_pkg ]]; then
		kernel_pkg=$(qemu_guest_resolve_kernel_pkg)
		if [[ -z $kernel_pkg ]]; then
			[[ $(id -u) == 0 ]] && qemu_guest_apt_update_once
			kernel_pkg=$(qemu_guest_resolve_kernel_pkg)
		fi
		[[ -n $kernel_pkg ]] || die "cannot tell which kernel linux-image-amd64 depends on (apt-cache depends linux-image-amd64); set $pkg_var"
	fi

	mkdir -p "$kcache"
	kroot=$kcache/$kernel_pkg
	if ! compgen -G "$kroot/boot/vmlinuz-*" >/dev/null || [[ ! -e $kroot/.complete ]]; then
		log "downloading $kernel_pkg"
		# Both harnesses share the cache and lock only their own output
		# folders: extract next to the cache and rename at the end, so that
		# a concurrent run never sees half a kernel.
		tmp=$(mktemp -d "$kcache/.download.XXXXXX")
		# shellcheck disable=SC2064 # $tmp is local: expand it now
		trap "rm -rf $(printf %q "$tmp")" EXIT
		# apt-get download writes into the current directory; as root it
		# warns that _apt cannot reach the folder, which is harmless.
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
}

# qemu_guest_modules MODULE... puts MODULE... and everything they depend on
# (modinfo -F depends) in load order, looking them up in $moddir (see
# qemu_guest_kernel). It sets:
#   mod_order  module names, each after its dependencies
#   mod_path   associative array: module name -> .ko file (maybe compressed)
qemu_guest_modules() {
	local f name m
	declare -gA mod_path=()
	declare -gA qemu_guest_mod_state=() # visiting | done
	mod_order=()
	while IFS= read -r f; do
		name=${f##*/}
		name=${name%%.ko*}
		mod_path[${name//-/_}]=$f
	done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
	for m in "$@"; do
		qemu_guest_add_module "$m"
	done
	log "modules: ${mod_order[*]}"
}

# qemu_guest_add_module appends a module after everything it depends on
# (depth first).
qemu_guest_add_module() {
	local m=${1//-/_} dep deps
	case ${qemu_guest_mod_state[$m]:-} in
	"done") return ;;
	visiting) die "module dependency cycle through $m" ;;
	esac
	[[ -n ${mod_path[$m]:-} ]] || die "module $m not found in $moddir (built in? renamed?)"
	qemu_guest_mod_state[$m]=visiting
	deps=$(modinfo -F depends "${mod_path[$m]}") || die "modinfo failed on ${mod_path[$m]}"
	for dep in ${deps//,/ }; do
		qemu_guest_add_module "$dep"
	done
	qemu_guest_mod_state[$m]="done"
	mod_order+=("$m")
}

# qemu_guest_rootfs DIR makes DIR a fresh initramfs tree: busybox in bin/,
# the modules of qemu_guest_modules decompressed in modules/ and their load
# order in modules/order. The caller adds its program and /init.
qemu_guest_rootfs() {
	local rootfs=$1 m src
	rm -rf "$rootfs"
	mkdir -p "$rootfs"/{bin,dev,proc,sys,tmp,modules}
	cp /bin/busybox "$rootfs/bin/busybox"
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
}

# qemu_guest_pack_initramfs DIR FILE writes DIR as a gzip'd newc cpio archive.
qemu_guest_pack_initramfs() {
	local rootfs=$1 initrd=$2
	(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 >"$initrd")
}

# qemu_guest_check_static BINARY fails unless BINARY is statically linked.
qemu_guest_check_static() {
	# A dynamically linked ELF names its loader; the guest has none.
	! LC_ALL=C grep -qa '/lib64/ld-linux-x86-64' "$1" ||
		die "$1 is dynamically linked; the guest has no C library (build with CGO_ENABLED=0)"
}

# qemu_guest_initramfs WORK MARKER INIT_SH [FILE...] builds a guest's
# initramfs in WORK/initramfs.gz (and sets initrd to it): the tree of
# qemu_guest_rootfs in WORK/rootfs, FILE... copied to its root, and /init:
# busybox sh with MARKER and SETUP_FAILED (MARKER-SETUP-FAILED) set, the
# common start (test/lib/guest-init.sh), then the harness's own INIT_SH.
qemu_guest_initramfs() {
	local work=$1 marker=$2 init_sh=$3 rootfs=$1/rootfs lib
	shift 3
	lib=$(dirname "${BASH_SOURCE[0]}")
	qemu_guest_rootfs "$rootfs"
	(($# == 0)) || cp "$@" "$rootfs/"
	{
		printf '#!/bin/busybox sh\nMARKER=%s\nSETUP_FAILED=%s-SETUP-FAILED\n' "$marker" "$marker"
		cat "$lib/guest-init.sh" "$init_sh"
	} >"$rootfs/init"
	chmod 755 "$rootfs/init"
	initrd=$work/initramfs.gz
	qemu_guest_pack_initramfs "$rootfs" "$initrd"
}
