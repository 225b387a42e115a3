# airlock - the user's front door. Two commands matter:
#   make run    build and start airlock on etc/airlock.json (127.0.0.1:3128)
#   make test   build with ASan+UBSan and run every test (unit + integration)
# Both install missing Debian packages first when run as root (run: only what
# building needs; test: the test tools too).
#   make install [PREFIX=/usr/local] [DESTDIR=]   binary, config, systemd unit
#   make deb     build-deb/airlock_VERSION_ARCH.deb (Release, dpkg-deb only)
# Builds print a line per step; V=1 shows the compiler's output (a failing
# step shows it anyway).

BUILD      ?= build
TEST_BUILD ?= build-test
BENCH_BUILD?= build-release
FUZZ_BUILD ?= build-fuzz
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CONFIG     ?= etc/airlock.json
DEB_BUILD  ?= build-deb
PREFIX     ?= /usr/local
DESTDIR    ?=
V          ?= 0

# Debian 12 package names. What building and running airlock needs (make run,
# make install, make deb):
DEB_BUILD_PKGS = cmake make gcc pkg-config libssl-dev node-llhttp libev-dev libcjson-dev \
                 libsqlite3-dev libc-ares-dev libidn2-dev zlib1g-dev libpq-dev
# ... and what tests, fuzzing, formatting and benchmarks add (make test):
DEB_TEST_PKGS = libcmocka-dev curl python3 openssl sqlite3 clang-format iproute2 nftables \
                clang libclang-rt-14-dev prometheus postgresql python3-requests
DEB_PKGS = $(DEB_BUILD_PKGS) $(DEB_TEST_PKGS)

.PHONY: all deps deps-build build run install deb test fuzz check-format format bench clean

all: build

# $(call al_deps,PACKAGES): installs the missing ones (as root) or says how.
define al_deps
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "airlock needs these Debian packages; run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
endef

# $(call al_step,WHAT,LOG,COMMAND): one line; COMMAND's output with V=1 or
# when it fails.
ifeq ($(V),1)
al_step = echo "$(1)"; $(3)
else
al_step = echo "$(1)"; mkdir -p $(dir $(2)); $(3) >$(2) 2>&1 || { cat $(2); exit 1; }
endif

deps:
	$(call al_deps,$(DEB_PKGS))

deps-build:
	$(call al_deps,$(DEB_BUILD_PKGS))

build: deps-build
	@$(call al_step,configure $(BUILD) (RelWithDebInfo),$(BUILD)/make-configure.log,\
	  cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAL_TESTS=OFF)
	@$(call al_step,build $(BUILD)/proxy/airlock,$(BUILD)/make-build.log,\
	  cmake --build $(BUILD) -j $(JOBS) --target airlock)

run: build
	@mkdir -p var
	$(BUILD)/proxy/airlock run --config $(CONFIG)

# Binary, config (etc/airlock.packaged.json as ETC/airlock/airlock.json, kept
# when present), systemd unit, docs; layout in cmake/Install.cmake. The user
# airlock and /var/lib/airlock are the Debian package's job (README).
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix $(PREFIX)

# A Debian package from a Release build, with dpkg-deb only (packaging/deb).
deb: deps-build
	@$(call al_step,configure $(DEB_BUILD) (Release),$(DEB_BUILD)/make-configure.log,\
	  cmake -S . -B $(DEB_BUILD) -DCMAKE_BUILD_TYPE=Release -DAL_TESTS=OFF)
	@$(call al_step,build $(DEB_BUILD)/proxy/airlock,$(DEB_BUILD)/make-build.log,\
	  cmake --build $(DEB_BUILD) -j $(JOBS) --target airlock)
	@sh packaging/deb/build.sh $(DEB_BUILD) $(DEB_BUILD) --strip

# The whole suite, under AddressSanitizer + UBSan, warnings as errors.
test: deps check-format
	$(MAKE) --no-print-directory fuzz
	@cmake -S . -B $(TEST_BUILD) -DAL_SANITIZE=ON -DAL_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build $(TEST_BUILD) -j $(JOBS)
	cd $(TEST_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure --timeout 600

# libFuzzer smoke: every harness in tests/fuzz for a few seconds on its corpus
# (clang; ASan+UBSan). A crash fails the run; the input is left in $(FUZZ_BUILD).
fuzz: deps
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DAL_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -R '^fuzz\.'

check-format: deps
	@files=$$(git ls-files '*.c' '*.h' 2>/dev/null || find common proxy policy secrets audit tests -name '*.[ch]'); \
	bad=$$(for f in $$files; do clang-format --dry-run -Werror $$f >/dev/null 2>&1 || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "not clang-formatted (run 'make format'):"; echo "$$bad"; exit 1; fi

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

bench: deps
	@cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release -DAL_TESTS=OFF >/dev/null
	cmake --build $(BENCH_BUILD) -j $(JOBS) --target airlock
	AIRLOCK=$(CURDIR)/$(BENCH_BUILD)/proxy/airlock bash bench/run.sh

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(BENCH_BUILD) $(FUZZ_BUILD) $(DEB_BUILD)
