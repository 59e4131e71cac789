# slicenet — the two set-up commands are `make demo` and `make test` (run as root on Debian).
SHELL := /bin/bash
CARGO ?= cargo
# System packages the build, the lab and the tests use (checked with dpkg, installed when missing).
PACKAGES := containerd runc containernetworking-plugins iproute2 iputils-ping iperf3 nftables \
            protobuf-compiler gcc libc6-dev util-linux procps python3 jq \
            wireguard-tools wireguard-go tcpdump python3-venv
# The lab's cluster DNS: a resolver on every node (dnsmasq) and the DNS client pods run (dig).
PACKAGES += dnsmasq-base bind9-dnsutils
# slice-dns's tests ask with kdig as well as dig.
PACKAGES += knot-dnsutils
# slicectl/tests/kind_script.rs checks the kind suite (which needs Docker) without running it.
PACKAGES += shellcheck
# The web console's test and figures: Debian's headless browser and its WebDriver.
PACKAGES += chromium chromium-driver
# Only the benchmarks use these.
BENCH_PACKAGES := openvpn dnsperf knot

.PHONY: deps build lint test test-root demo bench clean-lab test-under-load validators

deps:
	@missing=""; for p in $(PACKAGES) $(EXTRA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install them)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }

# One build serves `make test`, `make demo` and `make clean-lab`: building the binaries alone
# (`--bins`) resolves other features for shared dependencies than a build with the tests
# (dev-dependencies add features), so the two would rebuild each other's artifacts.
build: deps
	$(CARGO) build --workspace --bins --all-targets

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The manifest checkers slicectl/tests/validators.rs runs (kubernetes-validate, checkov), in a
# venv pinned by deploy/validate/; made again only when those pins change.
VALIDATORS_VENV := target/validators-venv
validators: $(VALIDATORS_VENV)/.installed
$(VALIDATORS_VENV)/.installed: deploy/validate/requirements.txt deploy/validate/constraints.txt | deps
	rm -rf $(VALIDATORS_VENV)
	/usr/bin/python3 -m venv $(VALIDATORS_VENV)
	$(VALIDATORS_VENV)/bin/pip install --quiet -r deploy/validate/requirements.txt -c deploy/validate/constraints.txt
	touch $@

# Current userspace WireGuard implementations from crates.io, the bench's competitors beside
# Debian's wireguard-go and OpenVPN: installed once under target/ (pinned versions).
BENCH_TOOLS := target/bench-tools
GOTATUN_VERSION := 0.10.2
BORINGTUN_CLI_VERSION := 0.7.1
$(BENCH_TOOLS)/bin/gotatun:
	$(CARGO) install --locked --root $(BENCH_TOOLS) gotatun-cli --version $(GOTATUN_VERSION)
$(BENCH_TOOLS)/bin/boringtun-cli:
	$(CARGO) install --locked --root $(BENCH_TOOLS) boringtun-cli --version $(BORINGTUN_CLI_VERSION)

# Every test: pure ones and the root ones on real namespaces, containerd's CRI and our binaries.
# The gateway's interop test runs against gotatun (installed once under target/, pinned above).
test: lint build validators $(BENCH_TOOLS)/bin/gotatun
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root: the lab creates network namespaces and runs containerd"; exit 1; }
	$(CARGO) test --workspace --no-fail-fast

demo: build
	target/debug/slicectl lab demo

bench: EXTRA_PACKAGES = $(BENCH_PACKAGES)
bench: deps $(BENCH_TOOLS)/bin/gotatun $(BENCH_TOOLS)/bin/boringtun-cli
	$(CARGO) build --release --workspace --bins
	PATH=$(CURDIR)/$(BENCH_TOOLS)/bin:$$PATH SLICENET_BIN_DIR=$(CURDIR)/target/release target/release/slicenet-bench
	target/release/webhook-bench --requests 10000 --rate 1000 --connections 8

# The whole suite RUNS times in a row under `stress-ng --cpu LOAD` (docs/testing.md): tests must
# not depend on the machine's speed.
LOAD ?= 2
RUNS ?= 3
test-under-load: EXTRA_PACKAGES = stress-ng
test-under-load: deps
	scripts/test-under-load.sh -c $(LOAD) -n $(RUNS) -l target/test-under-load.log -- $(MAKE) test

# Removes what a crashed lab left behind (idempotent).
clean-lab: build
	target/debug/slicectl lab down --all

# Coverage-guided fuzzing (docs/testing.md, "Fuzzing"): the fuzz crate's targets under libFuzzer,
# built on stable Rust with the sanitizer-coverage flags (cargo-fuzz would need nightly), for
# FUZZ_SECONDS per target. New inputs go to target/fuzz/corpus/<target>, crashes to
# target/fuzz/artifacts/<target>/; fuzz/corpus/<target> is read as seeds and never written.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= cni wg-config uapi admission slice-config
FUZZ_TRIPLE = $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks
.PHONY: fuzz
fuzz: EXTRA_PACKAGES = g++
fuzz: deps
	RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release -p slicenet-fuzz --features libfuzzer \
	  --bin slicenet-libfuzzer --target $(FUZZ_TRIPLE) --target-dir target/fuzz
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz/corpus/$$t target/fuzz/artifacts/$$t && echo "== fuzz $$t for $(FUZZ_SECONDS) s" && \
	  SLICENET_FUZZ_TARGET=$$t target/fuzz/$(FUZZ_TRIPLE)/release/slicenet-libfuzzer -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=target/fuzz/artifacts/$$t/ target/fuzz/corpus/$$t fuzz/corpus/$$t || exit 1; \
	done
