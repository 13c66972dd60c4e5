# Thin wrapper over CMake. `make run` serves the default policy on :8888; `make test` runs
# every test. Both install missing Debian packages first (as root), so a fresh Debian 12 works.
BUILD ?= build
DEBS := cmake make gcc pkg-config libuv1-dev node-llhttp liblua5.4-dev lua5.4 libjansson-dev \
        libssl-dev libhiredis-dev zlib1g-dev lua-busted libcmocka-dev redis-server openssl curl \
        $(shell cat tests/*/debs.txt 2>/dev/null)
JOBS ?= $(shell nproc)

.PHONY: all deps build run test npm clean

all: build

deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$(echo $$missing)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

# Every tests/ folder with a lock file gets its own node_modules, installed exactly from the lock.
NPM_DIRS := $(patsubst %/package-lock.json,%,$(wildcard tests/package-lock.json tests/*/package-lock.json))
npm: $(addsuffix /node_modules/.package-lock.json,$(NPM_DIRS))

%/node_modules/.package-lock.json: %/package.json %/package-lock.json
	cd $* && npm ci --no-audit --no-fund --loglevel=error

run: build
	./$(BUILD)/chatgw serve

test: build npm
	cd $(BUILD) && ctest --output-on-failure -j 1

clean:
	rm -rf $(BUILD)
