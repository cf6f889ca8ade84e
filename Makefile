# gpuslice. `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 30s
BENCHTIME ?= 1s
# TAGS are the build tags of make build. The shipped image leaves the fake
# GPU node out (nofakegpu); FAKE_GPU=1 keeps it, for a trial cluster
# without GPUs (the end-to-end tier installs such an image).
TAGS      ?=
IMAGE_TAGS = $(if $(filter 1,$(FAKE_GPU)),$(TAGS),$(strip nofakegpu $(TAGS)))

# go-nvml's cgo preamble warns about every deprecated NVML call it wraps.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/gpu-agent, bin/gpu-dra-driver, bin/kubectl-gpuslice, bin/gpu-quota-controller and bin/gpu-scheduler-extender.
	$(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/gpu-agent ./cmd/gpu-agent
	$(GO) build -trimpath -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/gpu-dra-driver ./cmd/gpu-dra-driver
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/kubectl-gpuslice ./cmd/kubectl-gpuslice
	ln -sf kubectl-gpuslice $(BIN)/kubectl_complete-gpuslice   # kubectl's completion of the plugin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/gpu-quota-controller ./cmd/gpu-quota-controller
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gpu-scheduler-extender ./cmd/gpu-scheduler-extender

# The Kubernetes release the API and end-to-end tiers run (test/e2e/k8s
# has one module per supported release): v1.37.2, the newest, and v1.34.4,
# the oldest with DRA GA.
K8S_VERSION ?= v1.37.2
# The end-to-end tier's packages: the single-node cluster's scenarios,
# then the multi-node cluster's (NODES GPU nodes and one without GPUs).
E2E_PKGS ?= ./test/e2e/ ./test/e2e/multinode/
NODES ?= 2
export K8S_VERSION

IMAGE ?= ghcr.io/gpuslice/gpu-agent:$(VERSION)
CONTROLLER_IMAGE ?= ghcr.io/gpuslice/gpu-quota-controller:$(VERSION)

.PHONY: image
image: ## Build the agent's (with gpu-dra-driver) and the quota controller's images as OCI archives in bin/, without a container engine; without the fake GPU node unless FAKE_GPU=1.
	$(MAKE) build TAGS='$(IMAGE_TAGS)'
	$(GO) run ./tools/mkimage --binary $(BIN)/gpu-agent --extra $(BIN)/gpu-dra-driver --name $(IMAGE) --version $(VERSION) --out $(BIN)/gpu-agent-image.tar
	$(GO) run ./tools/mkimage --binary $(BIN)/gpu-quota-controller --extra $(BIN)/gpu-scheduler-extender --name $(CONTROLLER_IMAGE) --version $(VERSION) --nvidia-env=false --user 65532 --out $(BIN)/gpu-quota-controller-image.tar

.PHONY: helm-lint
helm-lint: ## helm lint and helm template the chart (helm built from source by test/e2e/build-helm.sh).
	$$(test/e2e/build-helm.sh) lint --strict deployments/helm/gpuslice
	$$(test/e2e/build-helm.sh) template gpuslice deployments/helm/gpuslice --namespace gpuslice >/dev/null

.PHONY: test
test: ## Run vet and every unit and integration test with the race detector.
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

.PHONY: test-e2e
test-e2e: ## Run the end-to-end tier on Kubernetes K8S_VERSION (default v1.37.2): a real kubelet, API server, scheduler and containerd on this machine, then a multi-node cluster of NODES GPU nodes (default 2) and one without (root; see docs/testing.md).
	test/e2e/install-deps.sh
	test/e2e/build-k8s.sh >/dev/null
	test/e2e/build-kueue.sh >/dev/null
	PATH="$$(test/e2e/build-containerd.sh):$$PATH" GPUSLICE_E2E=1 GPUSLICE_E2E_NODES=$(NODES) $(GO) test -p 1 -count=1 -timeout 20m -v $(E2E_FLAGS) $(E2E_PKGS)

.PHONY: fragmentation
fragmentation: ## Run the fragmentation experiment: one seeded stream of GPU pods through the real kube-scheduler per placement path, its table kept in docs/fragmentation-raw.txt and docs/benchmarks.md regenerated (about 7 minutes; FRAG_FLAGS: -seed, -nodes, -pods, -rate, -lifetime).
	test/e2e/build-k8s.sh >/dev/null
	$(GO) run ./test/fragmentation $(FRAG_FLAGS) > docs/fragmentation-raw.txt.new
	mv docs/fragmentation-raw.txt.new docs/fragmentation-raw.txt
	$(GO) run ./tools/benchreport --raw docs/benchmarks-raw.txt --fragmentation docs/fragmentation-raw.txt --out docs/benchmarks.md

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 30s).
	$(GO) test ./pkg/vgpu -run '^$$' -fuzz '^FuzzPlace$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/vgpu -run '^$$' -fuzz '^FuzzParseSliceID$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/vgpu -run '^$$' -fuzz '^FuzzParseSize$$' -fuzztime $(FUZZTIME)
	$(GO) test ./cmd/gpu-agent -run '^$$' -fuzz '^FuzzConfigFile$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/nodeconfig -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/contract -run '^$$' -fuzz '^FuzzParseClaimEnforcement$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/fakegpu -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/host -run '^$$' -fuzz '^FuzzParseProcCgroup$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/kubeletstate -run '^$$' -fuzz '^FuzzParseCheckpoint$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/host -run '^$$' -fuzz '^FuzzParseStartTime$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/exporter -run '^$$' -fuzz '^FuzzExposition$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/contract -run '^$$' -fuzz '^FuzzParseGrants$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/contract -run '^$$' -fuzz '^FuzzParseNodeSlices$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/contract -run '^$$' -fuzz '^FuzzParsePreparedClaims$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/host -run '^$$' -fuzz '^FuzzParseBundleConfig$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/labels -run '^$$' -fuzz '^FuzzValue$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/quota -run '^$$' -fuzz '^FuzzSpecDecide$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/dra -run '^$$' -fuzz '^FuzzGrants$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/nvml -run '^$$' -fuzz '^FuzzParseMIGMinors$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/dra -run '^$$' -fuzz '^FuzzSemVer$$' -fuzztime $(FUZZTIME)
	$(GO) test ./pkg/dra -run '^$$' -fuzz '^FuzzTaintValue$$' -fuzztime $(FUZZTIME)

.PHONY: bench
bench: ## Run the benchmarks recorded in docs/benchmarks.md.
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./pkg/vgpu ./pkg/deviceplugin ./pkg/exporter ./pkg/sampler
	$(GO) test -run '^$$' -bench 'ExecToRegistered|Reregister' -benchtime 20x ./cmd/gpu-agent
	$(GO) test -run '^$$' -bench 'IdleRSS' -benchtime 3x ./cmd/gpu-agent
	$(GO) test -run '^$$' -bench 'RSSUnderHostileClients' -benchtime 1x ./cmd/gpu-agent
	$(GO) test -run '^$$' -bench DriverLimitOnCgroupCreation -benchtime 200x ./pkg/enforce

.PHONY: bench-report
bench-report: ## Run every benchmark docs/benchmarks.md reports as one run (root, about 10 minutes), keep its raw output in docs/benchmarks-raw.txt and regenerate the page from it.
	bash tools/benchreport/run.sh > docs/benchmarks-raw.txt.new
	mv docs/benchmarks-raw.txt.new docs/benchmarks-raw.txt
	$(GO) run ./tools/benchreport --raw docs/benchmarks-raw.txt --fragmentation docs/fragmentation-raw.txt --out docs/benchmarks.md

.PHONY: bench-node
bench-node: ## Run the real agent at node scale (8 GPUs x 200, 400 and 800 pods in real cgroups) and print its RSS, scrape latency and CPU, and their growth per container (root; about 5 minutes).
	$(GO) test -run '^$$' -bench '^BenchmarkNode$$' -benchtime 1x -timeout 10m ./cmd/gpu-agent | grep '^node '

.PHONY: bench-quota
bench-quota: ## Measure the quota controller's evaluation cycle: 500 namespaces, 5,000 running pods, 24h of backfilled history, real API server and Prometheus (about 2 minutes).
	$(GO) test -run '^$$' -bench EvaluationCycle -benchtime 20x -timeout 10m -v ./pkg/quota

.PHONY: bench-scale
bench-scale: build ## The cluster side at 100, 300 and 1,000 nodes: the quota controller's cycle, queries, samples read and RSS against a real API server and Prometheus holding 24h of N agents' series, with and without recording rules (about an hour); raw output in docs/scale-raw.txt, docs/benchmarks.md regenerated.
	cd test/scale/blocks && $(GO) build -o ../../../$(BIN)/scale-blocks .
	bash tools/benchreport/scale.sh > docs/scale-raw.txt.new
	mv docs/scale-raw.txt.new docs/scale-raw.txt
	$(MAKE) docs

.PHONY: bench-accuracy
bench-accuracy: ## The compute-accuracy gate: the throttle against the GPU model, with mutation checks (seconds; fails on a miss).
	$(GO) run ./test/accuracy/cmd/bench-accuracy --sensitivity

.PHONY: gpu-check-build
gpu-check-build: build ## Build the real-GPU kit (bin/gpu-check, bin/gpu-agent) to carry to a GPU machine with no network.
	$(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/gpu-check ./test/gpucheck

.PHONY: gpu-check
gpu-check: ## On a machine with an NVIDIA GPU, CUDA and PyTorch (root, no Go needed): run the kit and write docs/gpu-validation.md (at most 8 minutes).
	@test -x $(BIN)/gpu-check -a -x $(BIN)/gpu-agent || { echo "gpu-check: run make gpu-check-build first (on a machine with Go) and bring bin/ along"; exit 1; }
	$(BIN)/gpu-check --mode real --agent $(BIN)/gpu-agent --report docs/gpu-validation.md --budget 8m

.PHONY: gpu-check-dry
gpu-check-dry: gpu-check-build ## Run the real-GPU kit here against the fake libnvidia-ml and fake workloads (root; about three minutes).
	$(BIN)/gpu-check --mode dry --agent $(BIN)/gpu-agent --report $(BIN)/gpu-validation-dry.md --settle 4s --measure 3s
	@cat $(BIN)/gpu-validation-dry.md

.PHONY: bench-smoke
bench-smoke: ## Run every benchmark once, to prove they still work.
	$(GO) test -short -run '^$$' -bench . -benchtime 1x ./...

.PHONY: lint
lint: ## Run golangci-lint (pinned in go.mod's tool block).
	$(GO) tool golangci-lint run ./...

.PHONY: fmt
fmt: ## Format the code.
	$(GO) tool golangci-lint fmt ./...

.PHONY: verify
verify: ## Fail if go mod tidy, formatting or generation would change the tree, or docs/metrics.md or the package graph is stale.
	$(GO) mod tidy
	cd tools/controller-gen && $(GO) mod tidy
	$(MAKE) generate
	$(GO) tool golangci-lint fmt ./...
	$(GO) test -count=1 -run TestMetricsReference ./pkg/exporter
	$(GO) test -count=1 -run TestPackageGraph ./internal/arch
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "verify: the tree is not clean after tidy/fmt:"; git status --porcelain; git --no-pager diff; exit 1; fi

.PHONY: generate
generate: ## Regenerate api/v1alpha1's deep copies and the GPUQuota CRD (deployments/crds and the chart's crds/) with controller-gen.
	cd tools/controller-gen && $(GO) tool controller-gen object paths=../../api/... && \
		$(GO) tool controller-gen crd:allowDangerousTypes=true paths=../../api/... output:crd:dir=../../deployments/crds
	cp deployments/crds/gpuslice.io_gpuquotas.yaml deployments/helm/gpuslice/crds/gpuslice.io_gpuquotas.yaml

.PHONY: docs
docs: ## Regenerate docs/metrics.md, the package graph in docs/architecture.md and docs/benchmarks.md (from docs/benchmarks-raw.txt) from the code.
	$(GO) test ./pkg/exporter -run '^TestMetricsReference$$' -update
	$(GO) run ./tools/benchreport --raw docs/benchmarks-raw.txt --fragmentation docs/fragmentation-raw.txt --out docs/benchmarks.md
	$(GO) test ./internal/arch -run '^TestPackageGraph$$' -update

.PHONY: demo
demo: build ## Run the agent on the built-in fake GPU node against a kubelet stand-in.
	$(GO) run ./test/demo --agent $(BIN)/gpu-agent

.PHONY: clean
clean: ## Remove build outputs.
	rm -rf $(BIN)
