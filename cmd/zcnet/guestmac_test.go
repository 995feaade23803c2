package main

import (
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// guestMAC is a QEMU-style address of the guest's own, neither the
// simulated port's nor the generator's.
var guestMAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// TestSimGuestMACConfigured: with --guest-mac the generator sends to the
// guest's own address, which only the NIC's filter, programmed from the
// option, lets through; every frame must come back.
func TestSimGuestMACConfigured(t *testing.T) {
	s := simJSON(t, "--guest-mac", "52:54:00:12:34:56", "--duration", "700ms", "--rate", "3000")
	tr := s.Traffic
	if tr == nil || tr.GeneratorSent < 1000 || tr.SinkReceived != tr.GeneratorSent {
		t.Fatalf("frames to the guest's MAC did not all come back: %+v (NIC %+v)", tr, s.NICs)
	}
	if p := s.Ports[0]; p.GuestMAC != "52:54:00:12:34:56" || p.GuestMACSource != "configured" {
		t.Errorf("snapshot guest MAC %q (%s), want 52:54:00:12:34:56 (configured)", p.GuestMAC, p.GuestMACSource)
	}
	if f := s.NICs[0].RxFiltered; f == nil || *f != 0 {
		t.Errorf("rx_filtered = %v, want 0", f)
	}
}

// TestRunLearnsGuestMAC: a guest with a MAC of its own, given nowhere in
// the configuration. Frames to it are filtered by the NIC (and counted)
// until the guest transmits from it; then they reach the guest.
func TestRunLearnsGuestMAC(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	sock, tel := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "tel.sock")
	stop := startRun("--pci", "0000:03:00.0", "--vhost", sock, "--rxd", "256", "--txd", "256", "--telemetry", tel)
	defer checkShutdown(t, stop)
	waitSocket(t, sock)
	pf, sink := f.pf("0000:03:00.0")
	g, err := guest.Dial(sock, guest.EchoOptions)
	if err != nil {
		t.Fatal(err)
	}
	pf.Deliver(frameTo(guestMAC, 60))
	s := waitTelemetry(t, tel)
	if n := s.NICs[0].RxFiltered; n == nil || *n != 1 || s.Ports[0].GuestMAC != "" {
		t.Fatalf("before the guest spoke: rx_filtered %v (want 1), guest MAC %q (want none)", n, s.Ports[0].GuestMAC)
	}

	// The guest announces itself, as Linux does with ARP or IPv6 DAD.
	announce := frameTo([6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 60)
	copy(announce[6:], guestMAC[:])
	if err := g.QueueTx(0, vhost.NetHeader{}, announce); err != nil {
		t.Fatal(err)
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	e, err := guest.RunEcho(g)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for deadline := time.Now().Add(5 * time.Second); s.Ports[0].GuestMAC == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the port never learned the guest's MAC")
		}
		s = waitTelemetry(t, tel)
	}
	if p := s.Ports[0]; p.GuestMAC != "52:54:00:12:34:56" || p.GuestMACSource != "learned" {
		t.Errorf("guest MAC %q (%s), want 52:54:00:12:34:56 (learned)", p.GuestMAC, p.GuestMACSource)
	}
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(guestMAC), FrameSize: 256}, pf)
	if err != nil {
		t.Fatal(err)
	}
	echoWith(t, gen, pf, sink, 100)
	if n := waitTelemetry(t, tel).NICs[0].RxFiltered; *n != 1 {
		t.Errorf("rx_filtered %d after the MAC was learned, want still 1", *n)
	}
}

// TestRunOffersPackedRings: a front end asking for packed rings gets them,
// and zero copy through them; --no-packed takes them off the offer.
// IN_ORDER is never offered.
func TestRunOffersPackedRings(t *testing.T) {
	for _, noPacked := range []bool{false, true} {
		f := useSimDevices(t)
		dir := t.TempDir()
		sock, tel := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "tel.sock")
		args := []string{"--pci", "0000:03:00.0", "--vhost", sock, "--rxd", "256", "--txd", "256", "--telemetry", tel}
		if noPacked {
			args = append(args, "--no-packed")
		}
		stop := startRun(args...)
		waitSocket(t, sock)
		offered := offeredFeatures(t, sock)
		if offered&vhost.FInOrder != 0 {
			t.Error("IN_ORDER offered: the engine completes RX buffers out of order")
		}
		if noPacked {
			if offered&vhost.FRingPacked != 0 {
				t.Error("--no-packed: RING_PACKED still offered")
			}
			checkShutdown(t, stop)
			continue
		}
		opt := guest.EchoOptions
		opt.Features = guest.DefaultWanted | vhost.FRingPacked
		g, err := guest.Dial(sock, opt)
		if err != nil {
			t.Fatal(err)
		}
		if g.Features&vhost.FRingPacked == 0 {
			t.Fatal("a front end asking for packed rings did not get them")
		}
		e, err := guest.RunEcho(g)
		if err != nil {
			t.Fatal(err)
		}
		pf, sink := f.pf("0000:03:00.0")
		echoThrough(t, pf, sink, 200)
		if s := waitTelemetry(t, tel); s.Totals().ZeroCopy < 400 {
			t.Errorf("%d frames zero-copy through packed rings, want at least 400", s.Totals().ZeroCopy)
		}
		checkShutdown(t, stop, pf)
		e.Close()
	}
}

// offeredFeatures asks the back end at sock for its virtio features, as a
// front end's first request, and disconnects.
func offeredFeatures(t *testing.T, sock string) uint64 {
	t.Helper()
	// The socket's path exists from bind, a moment before listen: a
	// connect in between is refused (seen once under make test's load).
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	for deadline := time.Now().Add(2 * time.Second); errors.Is(err, syscall.ECONNREFUSED) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		uc, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	}
	if err != nil {
		t.Fatal(err)
	}
	fe, err := guest.NewFrontend(uc)
	if err != nil {
		t.Fatal(err)
	}
	defer fe.Close()
	v, err := fe.U64(vhost.ReqGetFeatures)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
