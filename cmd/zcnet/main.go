// Command zcnet is the appliance binary: it probes for usable NICs, binds
// them to vfio-pci, and runs the zero-copy data path.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "zcnet:", err)
		os.Exit(1)
	}
}
