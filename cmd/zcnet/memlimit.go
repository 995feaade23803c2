package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/zcnet/zcnet/vhost"
)

// memLimitHelp documents --vhost-mem-limit for run and sim.
var memLimitHelp = fmt.Sprintf("most guest memory each vhost-user front end may have zcnet map and DMA-pin, e.g. 16G (suffix K, M, G or T, powers of 1024); a larger memory table is refused (default %dG; a --config entry's mem_limit wins)", vhost.DefaultMemLimit>>30)

// parseMemSize reads a size in bytes with an optional binary suffix (K, M,
// G, T, optionally followed by "iB" or "B"): "64G", "512MiB", "1073741824".
func parseMemSize(s string) (uint64, error) {
	num := strings.TrimSpace(s)
	for _, unit := range []string{"iB", "B"} {
		if n, ok := strings.CutSuffix(num, unit); ok && n != "" && strings.ContainsAny(n[len(n)-1:], "KMGTkmgt") {
			num = n
			break
		}
	}
	shift := 0
	if num != "" {
		if i := strings.IndexByte("KMGT", num[len(num)-1]&^0x20); i >= 0 {
			shift = 10 * (i + 1)
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: give bytes, optionally with a K, M, G or T suffix", s)
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// parseMemLimit checks v's MemLimit into v.memLimit (0: the device's
// default). A limit below one huge page would refuse every guest, which is
// surely a typo (a missing suffix).
func (v *vhostSpec) parseMemLimit() error {
	if v.MemLimit == "" {
		return nil
	}
	n, err := parseMemSize(v.MemLimit)
	if err != nil {
		return fmt.Errorf("mem_limit: %w", err)
	}
	if n < 2<<20 {
		return fmt.Errorf("mem_limit %s is under 2 MiB, which no guest fits in: did you mean %sG?", v.MemLimit, v.MemLimit)
	}
	v.memLimit = n
	return nil
}

// applyMemLimitFlag gives every vhost port without a limit of its own the
// --vhost-mem-limit value.
func applyMemLimitFlag(spec *applianceSpec, flag string) {
	if flag == "" {
		return
	}
	for i := range spec.Ports {
		for j := range spec.Ports[i].Vhost {
			if v := &spec.Ports[i].Vhost[j]; v.MemLimit == "" {
				v.MemLimit = flag
			}
		}
	}
}
