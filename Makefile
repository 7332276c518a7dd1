# Every check CI runs, and the commands the README gives. `make ci` is what .ci/run calls.
CARGO ?= cargo
export CARGO_INCREMENTAL ?= 0
LOCKED := --locked

.PHONY: ci fmt lint test deny build release run bench clean kube-e2e images chart

## ci: formatting, lints, the images, every test including the images' (what CI runs)
ci: fmt lint deny images
	$(MAKE) test NEXTEST_ARGS='--run-ignored all'

fmt:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets $(LOCKED) -- -D warnings

# Doc tests first: CI reads the runner's closing lines, which must be nextest's summary.
test:
	$(CARGO) test --doc --workspace $(LOCKED)
	$(CARGO) nextest run --workspace $(LOCKED) $(NEXTEST_ARGS)

## chart: the README's `sluice simulate --plot` chart, drawn again (a test fails when it drifts)
chart:
	$(CARGO) run $(LOCKED) -q -p sluice -- simulate examples/simulate/panic-burst.yaml --plot docs/simulate-panic-burst.svg >/dev/null

## images: static binary, FROM-scratch images, OCI archives in target/images/ (buildah)
images:
	./docker/build-images.sh

## kube-e2e: Sluice on Kubernetes end to end, against the API server double and the fake
## kubelet (also part of `make test`); with SLUICE_E2E_KUBECONFIG=FILE and
## SLUICE_E2E_GATEWAY=HOST:PORT, the same scenarios on a real cluster with deploy/ installed
kube-e2e:
	@if [ -n "$$SLUICE_E2E_KUBECONFIG" ]; then \
	  [ -n "$$SLUICE_E2E_GATEWAY" ] || { echo "kube-e2e: SLUICE_E2E_GATEWAY=HOST:PORT (the gateway's LoadBalancer, or a kubectl port-forward) is needed with SLUICE_E2E_KUBECONFIG" >&2; exit 2; }; \
	  $(CARGO) nextest run $(LOCKED) --profile real-cluster -p sluice --test kube_e2e; \
	else $(CARGO) nextest run $(LOCKED) -p sluice --test kube_e2e; fi

deny:
	@if command -v cargo-deny >/dev/null 2>&1; then $(CARGO) deny check; else echo "cargo-deny: skipped (not installed)"; fi

build:
	$(CARGO) build --workspace $(LOCKED)

release:
	$(CARGO) build --release $(LOCKED) -p sluice-queue-proxy -p sluice-sample-app -p sluice-autoscaler -p sluice-activator -p sluice-gateway -p sluice

## run: the whole platform on this machine from a Knative Service manifest (Ctrl-C drains and stops)
MANIFEST ?= examples/autoscale-go.yaml
run: release
	./target/release/sluice run -f $(MANIFEST)

## bench: load benchmarks (hey, pinned) and criterion micro-benchmarks; figures to stdout
bench: release
	./benches/queue-proxy.sh
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench kpa_load
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench autoscaler_load
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench activator_load
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench gateway_load
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench cold_start
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench kube_reconcile
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench hot_paths
	$(CARGO) bench $(LOCKED) -p sluice-benches --bench faults

clean:
	$(CARGO) clean
