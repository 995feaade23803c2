#!/usr/bin/env bash
# VFIO integration test: runs zcnet's in-guest VFIO test against a real Linux
# kernel. This machine has no IOMMU, no /dev/vfio and no KVM, so we boot a
# Debian kernel in QEMU (TCG) with an emulated Intel IOMMU and an emulated
# e1000e, hand the e1000e to vfio-pci inside the guest, and run a static Go
# test binary there. See README.md next to this file.
#
# Self-installing on Debian 12 (as root): installs its packages if missing and
# downloads the guest kernel into a cache folder. Idempotent: a second run
# reuses the cached kernel and only rebuilds the initramfs and test binary.
#
# Knobs (environment variables, all optional):
#   ZCNET_VFIO_TEST_PKG     Go package to build the guest test from   (./vfio)
#   ZCNET_VFIO_TEST_TAGS    build tags for that package               (vfioguest)
#   ZCNET_VFIO_TEST_RUN     -test.run pattern                         (TestGuest)
#   ZCNET_VFIO_TEST_BIN     run this prebuilt static binary instead of building one
#                           (it gets -test.v -test.run PATTERN; a plain program
#                           must print a "--- PASS: " line and "PASS" itself)
#   ZCNET_VFIO_QEMU_DEVICE  QEMU -device spec of the NIC     (e1000e,romfile=)
#   ZCNET_VFIO_PCI_ID       vendor:device the guest binds to vfio-pci (8086:10d3)
#   ZCNET_VFIO_KERNEL_PKG   Debian kernel package (default: what linux-image-amd64 depends on)
#   ZCNET_VFIO_HUGEPAGES    2 MiB hugepages reserved in the guest     (32)
#   ZCNET_VFIO_MEM          guest memory                              (512M)
#   ZCNET_VFIO_TIMEOUT      seconds before the guest is killed        (300)
#   ZCNET_VFIO_WORK         cache and output folder                   (test/vfio-qemu/work)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

test_pkg=${ZCNET_VFIO_TEST_PKG:-./vfio}
test_tags=${ZCNET_VFIO_TEST_TAGS:-vfioguest}
test_run=${ZCNET_VFIO_TEST_RUN:-TestGuest}
test_bin=${ZCNET_VFIO_TEST_BIN:-}
# romfile= skips the iPXE option ROM, which only slows the boot.
qemu_device=${ZCNET_VFIO_QEMU_DEVICE:-e1000e,romfile=}
pci_id=${ZCNET_VFIO_PCI_ID:-8086:10d3}
kernel_pkg=${ZCNET_VFIO_KERNEL_PKG:-}
hugepages=${ZCNET_VFIO_HUGEPAGES:-32}
guest_mem=${ZCNET_VFIO_MEM:-512M}
boot_timeout=${ZCNET_VFIO_TIMEOUT:-300}
work=${ZCNET_VFIO_WORK:-$here/work}

# The guest prints this marker last; the host trusts nothing else to decide
# whether the guest got as far as running the test.
marker=ZCNET-VFIO-RESULT

# shellcheck source=SCRIPTDIR/../lib/qemu-guest.sh
. "$here/../lib/qemu-guest.sh"

log() { printf '[vfio-qemu] %s\n' "$*" >&2; }
die() { printf '[vfio-qemu] FAIL: %s\n' "$*" >&2; exit 1; }

[[ $pci_id =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$ ]] || die "ZCNET_VFIO_PCI_ID must look like 8086:10d3, got '$pci_id'"

mkdir -p "$work"
# One run at a time per cache folder: concurrent runs would overwrite each
# other's initramfs and console log.
exec 9>"$work/.lock"
flock 9

# --- host packages -----------------------------------------------------------

qemu_guest_ensure_packages
command -v go >/dev/null || [[ -n $test_bin ]] || die "go is not on PATH; it is needed to build the guest test binary"
for tool in gzip flock timeout dpkg; do
	command -v "$tool" >/dev/null || die "$tool is not on PATH"
done

# --- guest kernel and modules ------------------------------------------------

qemu_guest_kernel "$work/kernel" "$kernel_pkg" ZCNET_VFIO_KERNEL_PKG
qemu_guest_modules vfio vfio_iommu_type1 irqbypass vfio_pci_core vfio_pci

# --- guest test binary -------------------------------------------------------

guest_bin=$work/guest.test
if [[ -n $test_bin ]]; then
	[[ -x $test_bin ]] || die "ZCNET_VFIO_TEST_BIN=$test_bin is not an executable file"
	cp "$test_bin" "$guest_bin"
else
	log "building $test_pkg (tags: $test_tags)"
	(cd "$repo" && CGO_ENABLED=0 go test -c -tags "$test_tags" -o "$guest_bin" "$test_pkg") ||
		die "building the guest test binary from $test_pkg failed"
	[[ -x $guest_bin ]] || die "go test -c produced no binary: does $test_pkg have test files with build tag $test_tags?"
fi
qemu_guest_check_static "$guest_bin"

# --- initramfs ---------------------------------------------------------------

rootfs=$work/rootfs
qemu_guest_rootfs "$rootfs"
cp "$guest_bin" "$rootfs/vfio.test"

vendor=0x${pci_id%%:*}
device=0x${pci_id##*:}
{
	# Values fixed at build time; the rest of init is static text.
	cat <<EOF
#!/bin/busybox sh
PCI_VENDOR=${vendor,,}
PCI_DEVICE=${device,,}
TEST_RUN='${test_run//\'/}'
TEST_TIMEOUT=$((boot_timeout * 3 / 4))s
HUGEPAGES=$hugepages
MARKER=$marker
SETUP_FAILED=ZCNET-VFIO-SETUP-FAILED
EOF
	cat "$here/../lib/guest-init.sh" "$here/init.sh"
} >"$rootfs/init"
chmod 755 "$rootfs/init"

initrd=$work/initramfs.gz
qemu_guest_pack_initramfs "$rootfs" "$initrd"

# --- boot ----------------------------------------------------------------------

console=$work/console.log
log "booting QEMU (TCG, timeout ${boot_timeout}s); console log: $console"
start=$SECONDS
set +e
timeout --kill-after=10 "$boot_timeout" qemu-system-x86_64 \
	-M q35 -accel tcg -cpu max -smp 1 -m "$guest_mem" \
	-device intel-iommu,intremap=on \
	-device "$qemu_device" \
	-kernel "$vmlinuz" -initrd "$initrd" \
	-append "console=ttyS0 intel_iommu=on iommu=pt panic=-1 quiet" \
	-nographic -no-reboot -nodefaults -serial stdio \
	</dev/null >"$console" 2>&1
qemu_rc=$?
set -e
# The serial console ends lines with \r\n.
sed -i 's/\r$//' "$console"
log "QEMU exited with status $qemu_rc after $((SECONDS - start))s"

# --- verdict -------------------------------------------------------------------

echo "----- guest test output -----"
sed -n '/^ZCNET-VFIO-BEGIN$/,/^'"$marker"' /p' "$console" | sed '1d;$d'
echo "-----------------------------"

result=$(grep -a "^$marker rc=" "$console" | tail -n1 || true)
if [[ -z $result ]]; then
	tail -n 40 "$console" >&2
	((qemu_rc == 124 || qemu_rc == 137)) && die "guest did not finish within ${boot_timeout}s (no $marker line)"
	die "guest stopped before printing $marker (QEMU status $qemu_rc); see $console"
fi
if grep -qa '^ZCNET-VFIO-SETUP-FAILED' "$console"; then
	sed -n '/zcnet-vfio guest:/,$p' "$console" >&2
	die "guest setup failed before the test ran; see $console"
fi
rc=${result#"$marker rc="}
[[ $rc == 0 ]] || die "guest test exited with status $rc; see $console"
section=$(sed -n '/^ZCNET-VFIO-BEGIN$/,/^'"$marker"' /p' "$console")
grep -qx 'PASS' <<<"$section" || die "guest test output has no PASS line; see $console"
grep -q -- '--- FAIL' <<<"$section" && die "guest test output has a failed test; see $console"
grep -q 'no tests to run' <<<"$section" && die "no test matched -test.run $test_run in ${test_bin:-$test_pkg}"
grep -q -- '--- PASS: ' <<<"$section" || die "no test reported --- PASS (run with -test.v); see $console"
log "PASS: VFIO guest test ($test_run) passed on kernel $kver with $qemu_device"
