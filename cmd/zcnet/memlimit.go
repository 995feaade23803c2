package main

import (
	"fmt"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/vhost"
)

// memLimitHelp documents --vhost-mem-limit for run and sim.
var memLimitHelp = fmt.Sprintf("most guest memory each vhost-user front end may have zcnet map and DMA-pin, e.g. 16G (suffix K, M, G or T, powers of 1024); a larger memory table is refused (default %dG; a --config entry's mem_limit wins)", vhost.DefaultMemLimit>>30)

// applyMemLimitFlag gives every vhost port without a limit of its own the
// --vhost-mem-limit value.
func applyMemLimitFlag(spec *appliance.Spec, flag string) {
	if flag == "" {
		return
	}
	for i := range spec.NICs {
		for j := range spec.NICs[i].Guests {
			if v := &spec.NICs[i].Guests[j]; v.MemLimit == "" {
				v.MemLimit = flag
			}
		}
	}
}
