# Profile-guided optimization of the example server.
#
#   make pgo-train       build an instrumented server, drive it with the load tool, merge the profile
#   make release-pgo     build the server with that profile (target/pgo/release/examples/server)
#   make pgo-benchmark   compare the plain release build with the PGO build, same load, same pinning
#
# Needs llvm-profdata matching rustc's LLVM: `rustup component add llvm-tools`
# (tried automatically). Debian's llvm packages are older than rustc's LLVM and
# cannot read its profiles.

FEATURES    ?= redb,metrics
PGO_DATA    ?= $(CURDIR)/target/pgo-data
TRAIN_SECS  ?= 10
BENCH_SECS  ?= 5
SYSROOT     := $(shell rustc --print sysroot)
HOST        := $(shell rustc -vV | sed -n 's/^host: //p')
PROFDATA    := $(SYSROOT)/lib/rustlib/$(HOST)/bin/llvm-profdata
PIN_SERVER  := $(shell command -v taskset >/dev/null && [ $$(nproc) -ge 2 ] && echo taskset -c 0)
PIN_LOAD    := $(shell command -v taskset >/dev/null && [ $$(nproc) -ge 2 ] && echo taskset -c 1)

.PHONY: pgo-train release-pgo pgo-benchmark llvm-profdata

llvm-profdata:
	@test -x "$(PROFDATA)" || rustup component add llvm-tools || { \
	  echo "error: PGO needs llvm-profdata for rustc's LLVM ($$(rustc -vV | sed -n 's/^LLVM version: //p'))."; \
	  echo "       Install it with: rustup component add llvm-tools"; exit 1; }

# Runs the server at $(1) in mode $(2), drives appends and reads, stops it cleanly.
define drive
	dir=$$(mktemp -d); \
	DS_SERVER__PORT=0 DS_STORAGE__MODE=$(2) DS_STORAGE__DATA_DIR=$$dir RUST_LOG=warn \
	  $(PIN_SERVER) $(1) > $$dir/out 2> $$dir/err & pid=$$!; \
	for i in $$(seq 100); do grep -q listening $$dir/out && break; sleep 0.1; done; \
	url=$$(sed -n 's/^listening on \(http:[^ ]*\)\/$$/\1/p' $$dir/out); \
	for i in $$(seq 100); do curl -sf $${url%/v1/stream}/readyz >/dev/null && break; sleep 0.1; done; \
	$(PIN_LOAD) target/release/examples/loadgen append --url $$url --connections 16 --streams 16 --seconds $(3); \
	kill -TERM $$pid; wait $$pid; rm -rf $$dir
endef

pgo-train: llvm-profdata
	rm -rf $(PGO_DATA) && mkdir -p $(PGO_DATA)
	cargo build --release --example loadgen
	RUSTFLAGS="-Cprofile-generate=$(PGO_DATA)" CARGO_TARGET_DIR=target/pgo-instrumented \
	  cargo build --release --features $(FEATURES) --example server
	$(call drive,target/pgo-instrumented/release/examples/server,memory,$(TRAIN_SECS))
	$(call drive,target/pgo-instrumented/release/examples/server,file-durable,$(TRAIN_SECS))
	"$(PROFDATA)" merge -o $(PGO_DATA)/merged.profdata $(PGO_DATA)/*.profraw
	@echo "profile: $(PGO_DATA)/merged.profdata"

release-pgo:
	@test -f $(PGO_DATA)/merged.profdata || { echo "error: run make pgo-train first"; exit 1; }
	RUSTFLAGS="-Cprofile-use=$(PGO_DATA)/merged.profdata" \
	  CARGO_TARGET_DIR=target/pgo cargo build --release --features $(FEATURES) --example server
	@echo "built: target/pgo/release/examples/server"

pgo-benchmark: release-pgo
	cargo build --release --features $(FEATURES) --example server --example loadgen
	@for mode in memory file-durable; do \
	  echo "== $$mode, plain release"; \
	  $(call drive,target/release/examples/server,$$mode,$(BENCH_SECS)); \
	  echo "== $$mode, PGO"; \
	  $(call drive,target/pgo/release/examples/server,$$mode,$(BENCH_SECS)); \
	done
