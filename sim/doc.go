// Package sim is a register-level model of the Intel 82599 10 GbE controller
// (physical function, device 8086:10FB), built from the datasheet as
// summarised in /work/shared/reference. It implements the vfio interfaces
// (Device, BAR, ConfigSpace, DMAMapper, IRQs), so a driver programs it
// exactly as it programs silicon: 32-bit register accesses on BAR0, PCI
// configuration space, and descriptors and buffers in memory the device can
// reach only through its IOMMU model. The model never calls into a driver.
//
// A PF owns one port. Frames arrive from the wire through Deliver (PF is a
// wire.Endpoint) and leave through the endpoint given to Attach. The two DMA
// engines run either deterministically, one pass per Step call, or freely in
// goroutines between Start and Stop.
//
// Modelled time: delays such as the EEPROM auto-read after a reset, the
// autonegotiation delay before LINKS reports link up, and the latency of
// RXDCTL/TXDCTL.ENABLE are counted in model ticks, not in wall time. Every
// BAR read and every engine pass is one tick, which is how a polling driver
// experiences time on silicon too: it keeps reading until the bit appears.
//
// Fault injection (FlapLink, DelayWriteBack, FailDMA, FailDMARange) makes
// the model produce the events a driver must survive: a link that drops
// and returns, completions written back late, DMA the IOMMU refuses. Each
// is counted where the hardware, or else the model (Counters), counts it.
package sim
