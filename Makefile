# Thin wrapper over CMake. `make run` serves the default policy on :8888; `make test` runs
# every test. Both install missing Debian packages first (as root), so a fresh Debian 12 works;
# each installs only what it needs: `make run` the build tools and libraries, `make test` those
# plus the test suites' packages.
BUILD ?= build
# building and running chatgw (curl for the README's first `curl localhost:8888/healthz`)
DEBS := cmake make gcc pkg-config libuv1-dev node-llhttp liblua5.4-dev libjansson-dev libssl-dev \
        libhiredis-dev zlib1g-dev libcurl4-openssl-dev curl
# Node.js, for the npm-based suites and tools, when none is on PATH
NODE_DEBS := $(if $(shell command -v node 2>/dev/null),,nodejs npm)
# the test suites: ctest's runners and servers, then each suite's own (tests/*/debs.txt: the
# browser, podman, Prometheus, gdb, ...)
TEST_DEBS := lua5.4 lua-busted libcmocka-dev redis-server openssl \
             $(shell cat tests/*/debs.txt 2>/dev/null) $(NODE_DEBS)
# One `deps` installs DEBS, which grows with the goals named on the command line, so that
# `make test` (or `make build test`) installs the lot before configuring and `make run` never does.
ifneq ($(filter test test-asan test-deps,$(MAKECMDGOALS)),)
DEBS += $(TEST_DEBS)
else ifneq ($(filter npm soak bench,$(MAKECMDGOALS)),)
DEBS += $(NODE_DEBS)
endif
JOBS ?= $(shell nproc)

.PHONY: all deps test-deps build run test npm clean fuzz fuzz-build fuzz-merge test-asan

all: build

deps:
	@missing=$$(for p in $(sort $(DEBS)); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$(echo $$missing)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# everything the tests need, without building or testing (CI images, offline preparation)
test-deps: deps

# Reconfigured when the installed packages change too: CMake finds cmocka, busted and node at
# configure time, so a build tree first made by `make run` gains the tests after `make test`
# installs them.
$(BUILD)/Makefile: CMakeLists.txt $(wildcard /var/lib/dpkg/status) | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# Every tests/ folder with a lock file gets its own node_modules, installed exactly from the lock.
# tests/bench is left to `make bench`: its peers (uWebSockets.js) are large and no test needs them.
NPM_DIRS := $(filter-out tests/bench,$(patsubst %/package-lock.json,%,$(wildcard tests/package-lock.json tests/*/package-lock.json)))
npm: deps $(addsuffix /node_modules/.package-lock.json,$(NPM_DIRS))

%/node_modules/.package-lock.json: %/package.json %/package-lock.json | deps
	cd $* && npm ci --no-audit --no-fund --loglevel=error

run: build
	./$(BUILD)/chatgw serve

test: build npm
	cd $(BUILD) && ctest --output-on-failure -j 1

clean:
	rm -rf $(BUILD)

# ---- fuzzing and sanitizers (tests/fuzz/README.md) ----
# `make fuzz` builds the libFuzzer targets with clang, ASan and UBSan in $(FUZZ_BUILD) and runs
# each for FUZZ_SECONDS, one after the other, from the committed seeds; what it finds goes to
# $(FUZZ_BUILD)/corpus (new inputs) and $(FUZZ_BUILD)/artifacts (crashes). `make fuzz-merge`
# folds the inputs that reach new edges back into tests/fuzz/corpus (edges only, not hit counts,
# to keep the committed corpora small). `make test-asan` runs the
# whole ctest suite, e2e included, against an ASan + UBSan build in $(ASAN_BUILD); any sanitizer
# report, even from a server process that exited cleanly, fails it.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= http ws proto policy pattern proxy
FUZZ_FLAGS ?=
ASAN_BUILD ?= build-asan

fuzz-build: deps
	@command -v clang >/dev/null && ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || \
	  $(MAKE) --no-print-directory deps DEBS='$(DEBS) clang libclang-rt-dev'
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DFUZZ=ON -DSANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))

fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts/$$t; \
	  seeds=tests/fuzz/corpus/$$t; [ -d tests/fuzz/regress/$$t ] && seeds="$$seeds tests/fuzz/regress/$$t"; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s, log in $(FUZZ_BUILD)/fuzz-$$t.log"; \
	  if ! ./$(FUZZ_BUILD)/tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/$$t.dict \
	       -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ -print_final_stats=1 $(FUZZ_FLAGS) \
	       $(FUZZ_BUILD)/corpus/$$t $$seeds >$(FUZZ_BUILD)/fuzz-$$t.log 2>&1; then \
	    tail -n 60 $(FUZZ_BUILD)/fuzz-$$t.log; echo "fuzz_$$t: FAILED, input in $(FUZZ_BUILD)/artifacts/$$t/"; exit 1; \
	  fi; \
	  grep -aE '^#[0-9]+[[:space:]]+(DONE|INITED)|stat::number_of_executed_units|stat::peak_rss_mb' $(FUZZ_BUILD)/fuzz-$$t.log | sed 's/^/  /'; \
	done

fuzz-merge: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  ./$(FUZZ_BUILD)/tests/fuzz/fuzz_$$t -merge=1 -use_counters=0 tests/fuzz/corpus/$$t $(FUZZ_BUILD)/corpus/$$t 2>&1 | grep -aE 'MERGE-OUTER: [0-9]+ new files' | sed "s/^/fuzz_$$t: /"; \
	done

test-asan: deps npm
	cmake -S . -B $(ASAN_BUILD) -DSANITIZE=ON -DFAULT_INJECTION=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	@rm -rf $(ASAN_BUILD)/sanitizer && mkdir -p $(ASAN_BUILD)/sanitizer
	@cd $(ASAN_BUILD) && \
	  ASAN_OPTIONS=log_path=$(abspath $(ASAN_BUILD))/sanitizer/asan:detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1 \
	  UBSAN_OPTIONS=log_path=$(abspath $(ASAN_BUILD))/sanitizer/ubsan:print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j 1; rc=$$?; \
	  if ls sanitizer/* >/dev/null 2>&1; then \
	    for f in sanitizer/*; do echo "==== $(ASAN_BUILD)/$$f"; cat $$f; done; echo "test-asan: sanitizer reports above"; exit 1; \
	  fi; exit $$rc

# ---- benchmarks (tests/bench/README.md) ----
# `make bench` installs the peers' Debian packages (tests/bench/debs-bench.txt; `make test` never
# needs them) and npm packages, builds chatgw and the load generator in Release in
# $(BENCH_BUILD), runs every scenario against chatgw and each peer (tests/bench/run.mjs) and
# writes BENCHMARKS.md. Package installs never start a system service (policy-rc.d).
BENCH_BUILD ?= build-bench
.PHONY: bench bench-build bench-scale bench-pack

bench: deps tests/bench/node_modules/.package-lock.json
	@debs="$$(cat tests/bench/debs-bench.txt)"; missing=; \
	for p in $$debs; do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  prc=; if [ "$$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; prc=1; fi; \
	  $(MAKE) --no-print-directory deps DEBS="$$missing"; rc=$$?; \
	  if [ -n "$$prc" ]; then rm -f /usr/sbin/policy-rc.d; fi; [ $$rc = 0 ] || exit $$rc; \
	fi
	$(MAKE) --no-print-directory bench-build
	BENCH_BUILD=$(BENCH_BUILD) node tests/bench/run.mjs

bench-build: deps
	cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BENCH_BUILD) -j $(JOBS) --target chatgw chatgw-bench

# Multi-core scaling (tests/bench/scale.sh: WORKERS, GENS, ROUNDS, SECS, CONNS), and the same
# binaries packed with their libraries for a machine with more cores (tests/bench/pack.sh).
bench-scale: bench-build
	tests/bench/scale.sh $(BENCH_BUILD)

bench-pack: bench-build
	tests/bench/pack.sh $(BENCH_BUILD)

# Redis Cluster against one Redis (tests/bench/cluster.mjs, under 3 minutes): deliveries/s and
# per server CPU-second through 1, 2 and 3 shards, and the latency cluster mode adds.
.PHONY: bench-cluster
bench-cluster: bench-build
	@$(MAKE) --no-print-directory deps DEBS="redis-server $(NODE_DEBS)"
	BENCH_BUILD=$(BENCH_BUILD) node tests/bench/cluster.mjs

# ---- soak (tests/soak/soak.mjs) ----
# `make soak` runs a bounded soak against $(BUILD)/chatgw: SOAK_CLIENTS (2000) clients connect,
# chat, join and leave rooms and disconnect abruptly in a loop for SOAK_SECONDS (60) after a
# warm-up; it then checks that RSS is within 10% of RSS after the warm-up, that the open-fd count
# is back to its baseline and that no error-level line was logged, and prints the figures.
SOAK_SECONDS ?= 60
.PHONY: soak
soak: build npm
	SOAK_SECONDS=$(SOAK_SECONDS) CHATGW_BIN=$(abspath $(BUILD))/chatgw node tests/soak/soak.mjs
