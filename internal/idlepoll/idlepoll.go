// Package idlepoll runs the polling loops of zcnet's stand-ins for other
// parties (the simulated NIC's DMA engines, the simulated host PF driver,
// the built-in guest): each polls as the party it models would, at once
// while there is work, and backs off when idle so that an idle model does
// not take a CPU from the poll cores it exists to test.
package idlepoll

import (
	"runtime"
	"time"
)

const (
	// yields is how many idle polls in a row yield the goroutine before
	// the loop starts sleeping: a burst arriving soon after the last one
	// is picked up within a scheduler round.
	yields = 256
	// nap is the sleep between polls once idle for longer.
	nap = 20 * time.Microsecond
)

// Run calls step until stop is closed: again at once while step reports
// work (> 0), after runtime.Gosched for the first idle calls in a row, then
// every nap.
func Run(stop <-chan struct{}, step func() int) {
	idle := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		if step() > 0 {
			idle = 0
			continue
		}
		if idle++; idle < yields {
			runtime.Gosched()
		} else {
			time.Sleep(nap)
		}
	}
}
