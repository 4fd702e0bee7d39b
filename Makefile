# berth: build, test and boot the OS images.
#   make image   build out/ from images/minimal.yaml (installs what it needs)
#   make test    go vet + unit tests + end-to-end boot tests under qemu
#   make boot    boot the built image with the serial console on this terminal

# bash for pipefail: the e2e log goes through tee.
SHELL    := /bin/bash

SPEC     ?= images/minimal.yaml
OUT      ?= out
CACHE    ?= /var/cache/berth
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GO       ?= go
GOFLAGS_BUILD = -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
# Every test package may boot VMs; a slow machine without KVM needs time.
TEST_TIMEOUT ?= 90m

DEB_PACKAGES = mmdebstrap squashfs-tools erofs-utils dosfstools mtools \
	qemu-system-x86 ovmf qemu-utils gdisk cpio e2fsprogs systemd \
	systemd-boot-efi busybox-static uidmap ca-certificates \
	libseccomp-dev runc iproute2 util-linux drbd-utils \
	vagrant vagrant-libvirt

.PHONY: all deps build image boot test unit e2e vet fmt bench clean cluster cluster-down vagrant-box vagrant-validate vagrant-test

all: build

# Idempotent: installs only what is missing (apt-get update once, then install).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: need root to install:$$missing (run: sudo make deps)" >&2; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all installed"; fi

build:
	@mkdir -p bin
	$(GO) build $(GOFLAGS_BUILD) -o bin/berth-build ./builder/cmd/berth-build
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/berth-init ./builder/initrd/init
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/berth-update ./updater/cmd/berth-update
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/berth-agent ./agent/cmd/berth-agent
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/berthctl ./agent/cmd/berthctl
	@# The container monitor needs cgo (libcontainer's nsenter) and libseccomp.
	CGO_ENABLED=1 $(GO) build $(GOFLAGS_BUILD) -tags seccomp -o bin/berth-shim ./agent/cmd/berth-shim

# The key that signs update payloads of `make image`; made once, never
# committed. Production images should be signed with a key kept elsewhere.
KEY ?= keys/berth-dev
$(KEY).key:
	@mkdir -p $(dir $(KEY))
	bin/berth-build keygen $(KEY)

image: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "make image: building an image needs root (file owners, setuid bits, device nodes): run sudo make image" >&2; exit 1; fi
	@$(MAKE) --no-print-directory $(KEY).key
	bin/berth-build build $(SPEC) -o $(OUT) --cache $(CACHE) --key $(KEY).key

IMAGE ?= $(firstword $(wildcard $(OUT)/*.raw))
boot: build
	@test -n "$(IMAGE)" || { echo "make boot: no image in $(OUT)/: run make image first" >&2; exit 1; }
	bin/berth-build run $(IMAGE)

# make cluster [N=3] [CLUSTER=dev]: N VMs of the built image on a private
# network (a namespace with a bridge and taps); make cluster-down removes them.
N       ?= 3
CLUSTER ?= dev
cluster: build
	@if [ "$$(id -u)" != 0 ]; then echo "make cluster: needs root (network namespace, taps): sudo make cluster" >&2; exit 1; fi
	@test -n "$(IMAGE)" || { echo "make cluster: no image in $(OUT)/: run make image first" >&2; exit 1; }
	bin/berth-build cluster up --name $(CLUSTER) -n $(N) --image $(IMAGE)
cluster-down:
	@test -x bin/berth-build || $(MAKE) --no-print-directory build
	bin/berth-build cluster down --name $(CLUSTER)

# Vagrant (vagrant-libvirt): a box of images/vagrant.yaml, and a real 3-node
# cluster from vagrant/Vagrantfile (about 12 min without KVM; not in make test).
VAGRANT_OUT ?= /tmp/berth-vagrant
VAGRANT_BOX ?= berth-test
vagrant-box: deps build
	@$(MAKE) --no-print-directory $(KEY).key
	bin/berth-build build images/vagrant.yaml -o $(VAGRANT_OUT) --cache $(CACHE) --key $(KEY).key
	bin/berth-build box $(VAGRANT_OUT)/berth-vagrant-*.qcow2
vagrant-validate:
	@command -v vagrant >/dev/null || { echo "make vagrant-validate: install vagrant (apt-get install vagrant vagrant-libvirt)" >&2; exit 1; }
	cd vagrant && VAGRANT_CHECKPOINT_DISABLE=1 vagrant validate
vagrant-test: vagrant-box
	@pgrep -x libvirtd >/dev/null || { virtlogd -d; libvirtd -d; sleep 2; }
	vagrant box add --force --name $(VAGRANT_BOX) $(VAGRANT_OUT)/berth-vagrant-*.box
	cd vagrant && export BERTH_BOX=$(VAGRANT_BOX) BERTH_MGMT_NETWORK_MODE=none; \
	  trap 'vagrant destroy -f' EXIT; \
	  vagrant up && vagrant ssh node-1 -c 'berthctl nodes --timeout 30s' | tee /dev/stderr | grep -c ' Ready ' | grep -qx 3

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l builder updater agent)" || { gofmt -l builder updater agent; echo "gofmt: files above need formatting" >&2; exit 1; }

unit: build
	$(GO) test -count=1 ./...
	@# A short run of every fuzz target (they also run their seed corpora above).
	@# Minimizing a new input is bounded: Go's fuzzer fails with "context
	@# deadline exceeded" when -fuzztime ends while it minimizes a large one
	@# (FuzzOpenArchive's tarball seed did, about every other run).
	@# Go 1.26's fuzz coordinator can fail a target with a bare "context
	@# deadline exceeded" when -fuzztime ends under CPU load (golang/go#75804,
	@# fixed in Go 1.27): a run that fails that way and wrote no failing
	@# input found nothing; any other failure, or a written input, fails.
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$t/*_test.go | sed 's/func //'); do \
			echo "fuzz $$t $$f"; \
			out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 10s -fuzzminimizetime 2s $$t 2>&1); rc=$$?; echo "$$out"; \
			if [ $$rc -ne 0 ]; then \
				if echo "$$out" | grep -q '^    context deadline exceeded$$' && ! echo "$$out" | grep -q 'Failing input written'; then \
					echo "fuzz $$f: stopped by Go's fuzztime race (golang/go#75804), no failing input written: not a finding"; \
				else exit 1; fi; \
			fi; \
		done; \
	done

# End-to-end: builds images from images/minimal.yaml and boots them under
# qemu (KVM when a probe guest runs under it, else software emulation;
# BERTH_ACCEL=kvm|tcg overrides). Each test's and scenario's time is
# printed at the end; the whole log stays in $(E2E_LOG).
E2E_LOG ?= $(OUT)/e2e.log
e2e: deps build
	@mkdir -p $(dir $(E2E_LOG))
	@set -o pipefail; start=$$(date +%s); \
	BERTH_E2E=1 BERTH_CACHE=$(CACHE) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run 'E2E' ./builder/e2e/ 2>&1 | tee $(E2E_LOG); rc=$$?; \
	echo "== end-to-end times (all output in $(E2E_LOG))"; \
	grep -E '^ *--- (PASS|FAIL|SKIP)' $(E2E_LOG) || true; \
	echo "== end-to-end total: $$(( $$(date +%s) - start )) s"; exit $$rc

test: deps vet unit vagrant-validate e2e

bench: deps build
	@# Scheduler: 1,000 simulated nodes, 10,000 replicas (ratio to pure placement).
	$(GO) test -count=1 -run '^$$' -bench Schedule1000Nodes -benchtime 3x ./agent/sched/
	@# Container start: our runtime vs runc run of the same bundle (ratio).
	$(GO) test -count=1 -run '^$$' -bench StartLatency -benchtime 20x ./agent/runtime/
	BERTH_E2E=1 BERTH_CACHE=$(CACHE) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^$$' -bench . -benchtime 1x ./builder/e2e/

clean:
	rm -rf bin $(OUT)

# Man pages of the programs into man/ (gitignored): each program's hidden
# `gen-man DIR` command (cli.GenManCommand). Add a program's package here.
MAN_PROGRAMS = ./builder/cmd/berth-build ./updater/cmd/berth-update ./agent/cmd/berth-agent ./agent/cmd/berthctl
.PHONY: man
man:
	@mkdir -p man
	@for p in $(MAN_PROGRAMS); do $(GO) run $$p gen-man man || exit 1; done
	@ls man
