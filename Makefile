# zcnet build, test and demo targets. `make test` is what CI runs.
SHELL        := /bin/bash
GO           ?= go
BIN          := bin
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X main.version=$(VERSION)
STATICCHECK  := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# 2 MiB pages to keep reserved for tests and the demo (2 GiB).
HUGEPAGES    ?= 1024

.PHONY: all build test test-unit test-vfio test-qemu-vhost test-qemu-zerocopy test-migration test-dpdk bench bench-sim bench-vhost fuzz soak demo lint hugepages clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/zcnet ./cmd/zcnet

## test: the whole suite: lint, unit and simulator tests under the race
## detector, the VFIO layer against a real kernel in a QEMU guest, and
## QEMU with a Linux guest and DPDK's testpmd as vhost-user front ends, and
## a Linux guest in QEMU served zero-copy by zcnet sim over a TAP, and
## that guest live-migrated between two zcnet sims.
test: lint test-unit test-vfio test-qemu-vhost test-qemu-zerocopy test-migration test-dpdk

test-unit: hugepages
	$(GO) test -race -count=1 -timeout 10m $$($(GO) list ./... | grep -v /test/dpdk)

## test-qemu-vhost: boots a QEMU/TCG guest whose virtio-net-pci uses zcnet's
## vhost-user back end (loopback on a pinned lcore); every frame the Linux
## driver sends must come back intact, with and without guest offloads.
test-qemu-vhost:
	bash test/qemu-vhost/run.sh

## test-qemu-zerocopy: a QEMU/TCG Linux guest with its own MAC, served
## zero-copy by `zcnet sim --tap --vhost` in a network namespace: ping and
## TCP both ways (checksummed) with offloads on/off, mergeable buffers on/off,
## split/packed rings, memfd/hugetlbfs RAM and QEMU killed mid-transfer;
## every received frame accounted for, no copy a layout could avoid.
test-qemu-zerocopy: hugepages
	bash test/qemu-zerocopy/run.sh

## test-migration: live migration of a guest served zero-copy (issue 15): a
## QEMU/TCG Linux guest on `zcnet sim --tap --vhost PATH` (migration on by default)
## verifies a UDP stream byte for byte (checksum offload reported, so a page
## the dirty log missed cannot hide) while QEMU migrates it to a second QEMU
## on a second zcnet sim on the same bridge (SEND_RARP moves the bridge);
## split and packed rings; every loss counted by a zcnet; the destination's
## memory compared with the source's before it runs (see host_test.go's
## checkArrivedMemory), about 100 s.
test-migration: hugepages
	bash test/qemu-migration/run.sh

## test-dpdk: DPDK 22.11 testpmd (net_virtio_user) against zcnet's vhost back
## end, and against DPDK's net_vhost as a baseline; run on its own so that
## testpmd's busy-polling cores do not share the CPUs with other packages.
test-dpdk: hugepages
	$(GO) test -race -count=1 -timeout 10m ./test/dpdk/

## test-vfio: boots a QEMU/TCG guest with a virtual IOMMU and an e1000e bound
## to vfio-pci, and runs the vfio package's guest tests inside it.
test-vfio:
	bash test/vfio-qemu/run.sh

bench: hugepages
	$(GO) test -run '^$$' -bench . -benchmem -count=1 $$($(GO) list ./... | grep -v /test/dpdk)

## bench-sim: zcnet bench: phy -> guest -> phy on the simulator, zero-copy and
## copy at 64/512/1500 bytes; PMD ns and cycles per packet, Mpps, latency.
bench-sim: build hugepages
	$(BIN)/zcnet bench
	$(BIN)/zcnet bench --json > $(BIN)/bench-sim.json

## bench-vhost: testpmd virtio-user in txonly/rxonly/io against zcnet's back
## end and against DPDK's net_vhost, alternately, in Mpps.
bench-vhost: hugepages
	$(GO) test -run '^$$' -bench BenchmarkVirtioUser -benchtime 1x -count=1 ./test/dpdk/

## fuzz: 60 s for each fuzzer: vhost message parsing, split and packed
## chains, whole front-end sessions against a served Device, and hostile
## guest chains through the whole engine (vhost Device, Port, simulated
## 82599) that must only ever name the guest's own memory.
fuzz:
	$(GO) test -run '^$$' -fuzz=FuzzMessage     -fuzztime=60s ./vhost/
	$(GO) test -run '^$$' -fuzz=FuzzSplitChain  -fuzztime=60s -fuzzminimizetime=5s ./vhost/
	$(GO) test -run '^$$' -fuzz=FuzzPackedChain -fuzztime=60s -fuzzminimizetime=5s ./vhost/
	$(GO) test -run '^$$' -fuzz=FuzzDeviceSession -fuzztime=60s -fuzzminimizetime=10s ./vhost/
	$(GO) test -run '^$$' -fuzz=FuzzEngineChains -fuzztime=60s -fuzzminimizetime=10s ./engine/

## soak: SOAK_DURATION (default 10m) of two guests, each served zero-copy by
## its own `zcnet sim` port, echoing the generators' traffic while they
## reconnect, change memory tables, stop rings and misbehave (garbage
## descriptors, bad and partial messages, non-eventfd notifiers, unsealed
## and truncated memory); every frame accounted for, descriptors,
## goroutines and RSS flat, no IOMMU fault. Not part of `make test`.
## SOAK_RATE (frames/s per guest), SOAK_TRUNCATE=0, SOAK_SEED and
## SOAK_ACTIONS (a comma list of the actions to take) tune it.
SOAK_DURATION ?= 10m
soak: build hugepages
	SOAK_DURATION=$(SOAK_DURATION) ZCNET_BIN=$(CURDIR)/$(BIN)/zcnet \
	  $(GO) test -tags soak -count=1 -timeout 0 -v -run '^TestSoak$$' ./test/soak/

## demo: the whole data path on the simulator: an 82599 model, the zero-copy
## engine on a pinned lcore and a vhost-user guest (over a real unix socket)
## echoing a generator's frames back to a verifying sink. A ramp of 0.5 s
## trials first finds the highest loss-free rate (some 6 s), then 10 s run at
## 0.8 of it; the summary gives Mpps through the guest, the lcore's busy %
## and ns per frame moved, and latency p50/p99/p99.9/max.
demo: build hugepages
	$(BIN)/zcnet sim --rate auto --duration 10s

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags qemuvhost ./test/qemu-vhost/
	$(GO) vet -tags qemuzerocopy ./test/qemu-zerocopy/
	$(GO) vet -tags qemumigration ./test/qemu-migration/
	$(GO) run $(STATICCHECK) ./...

## hugepages: reserve $(HUGEPAGES) 2 MiB pages and mount hugetlbfs (root, idempotent).
hugepages:
	@bash scripts/hugepages.sh $(HUGEPAGES)

clean:
	rm -rf $(BIN) test/vfio-qemu/work test/qemu-vhost/work test/qemu-zerocopy/work test/qemu-migration/work
