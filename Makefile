# The two commands a user needs are `make run` and `make test`; both install what they
# need (Debian packages, Go-built control-plane binaries) and cache heavy builds under
# $${XDG_CACHE_HOME:-$$HOME/.cache}/kube-acme-dns.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test e2e e2e-kind lint build generate deps tools image cluster-up cluster-down cluster-env aggregation-check bench bench-dns bench-api bench-scale bench-issuance fuzz soak

## run: start a local control plane, install the CRD and a sample account, run `serve`
run: deps tools
	@e2e/run.sh

## test: lint, unit tests, and integration tests against a local control plane
test: deps tools
	@e2e/test.sh

## e2e: the end-to-end tests alone: issuance through cert-manager and Pebble, cert-manager's
## DNS01 conformance suite, the webhook through the aggregation layer (all part of `make test`)
e2e: deps tools
	@e2e/test.sh --test issuance --test conformance --test webhook

## e2e-kind: on a host with Docker, kind and helm: the image, cert-manager, the chart, Pebble
## and a resolver in a kind cluster, and a Certificate for a name and its wildcard to Ready
e2e-kind:
	@e2e/kind/run.sh

## lint: rustfmt and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

build:
	$(CARGO) build

## generate: regenerate the CRD in crd/ and in the chart from the Rust types, and the
## kubectl-ready manifests in deploy/ from the chart
generate: tools
	$(CARGO) run -q -- crd > crd/acmednsaccounts.yaml
	cp crd/acmednsaccounts.yaml charts/kube-acme-dns/crds/acmednsaccounts.yaml
	"$$(e2e/tools.sh path helm)" template kad charts/kube-acme-dns --namespace kube-acme-dns \
	  --kube-version 1.37.2 --include-crds > deploy/kube-acme-dns.yaml

deps:
	@e2e/deps.sh

## tools: build etcd, kube-apiserver, kubectl, helm and the node's kubelet, kube-proxy,
## kube-scheduler and kube-controller-manager through the Go module proxy (cached)
tools:
	@e2e/tools.sh etcd kube-apiserver kubectl helm node

cluster-up: deps tools
	@e2e/cluster.sh up

cluster-down:
	@e2e/cluster.sh down

## image: build the image from the release binary and load it into the local node
image: deps
	@e2e/image.sh

## cluster-env: print `export KUBECONFIG=…` for the local control plane
cluster-env:
	@e2e/cluster.sh env

aggregation-check:
	@e2e/aggregation-check.sh

## bench: every benchmark; results go to bench/results/ with the machine and date
bench: bench-dns bench-api bench-scale bench-issuance

## bench-dns: dnsperf against our responder, Knot and BIND serving the same TXT names
bench-dns:
	@bench/dns.sh

## bench-scale: 100 000 AcmeDnsAccounts (SCALE_ACCOUNTS) in the local API server, two replicas
## with every role: start → ready, memory, DNS answers/s, update → answer, Presents/s
bench-scale: deps tools
	@bench/scale.sh

## bench-issuance: Certificate → Ready through Pebble and cert-manager's controllers, our webhook
## against cert-manager's RFC 2136 solver writing to BIND, 5 each (ISSUANCE_CERTIFICATES)
bench-issuance: deps tools
	@bench/issuance.sh

## bench-api: /update throughput and latency, update→answer on two replicas (bcrypt cost 10),
## and DNS latency during a storm of bad API credentials
bench-api: deps tools
	@bench/api.sh

## soak: two replicas under DNS load, Present/CleanUp cycles and account churn for up to
## 30 minutes (SOAK_MINUTES); memory, descriptors, threads and tasks over time, lost updates
soak: deps tools
	@e2e/soak.sh

## fuzz: cargo-fuzz (nightly, libFuzzer): the DNS answer path for 10^7 executions, the
## webhook, acme-dns API and CRD value parsers for 5 min each; results in bench/results/
fuzz:
	@e2e/fuzz.sh
