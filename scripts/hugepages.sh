#!/usr/bin/env bash
# Reserve at least N 2 MiB hugepages and mount hugetlbfs on /dev/hugepages.
# Idempotent: never lowers an existing reservation, never mounts twice.
set -euo pipefail
want=${1:-1024}
nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
have=$(cat "$nr" 2>/dev/null || echo 0)
mounted=0
grep -qs ' hugetlbfs ' /proc/mounts && mounted=1
if [ "$have" -ge "$want" ] && [ "$mounted" = 1 ]; then
	echo "hugepages: $have x 2 MiB reserved, hugetlbfs mounted"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "hugepages: $have of $want 2 MiB pages reserved; run 'sudo make hugepages' to reserve them and mount hugetlbfs" >&2
	exit 1
fi
if [ ! -e "$nr" ]; then
	echo "hugepages: $nr missing: this kernel has no 2 MiB hugetlb support" >&2
	exit 1
fi
if [ "$have" -lt "$want" ]; then
	echo "$want" >"$nr"
	got=$(cat "$nr")
	if [ "$got" -lt "$want" ]; then
		echo "hugepages: asked for $want x 2 MiB, the kernel found only $got (memory fragmented?); drop caches or reboot with hugepages=$want" >&2
		exit 1
	fi
fi
if [ "$mounted" = 0 ]; then
	mkdir -p /dev/hugepages
	mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi
echo "hugepages: $(cat "$nr") x 2 MiB reserved, hugetlbfs mounted"
