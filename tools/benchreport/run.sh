#!/usr/bin/env bash
# Runs every benchmark docs/benchmarks.md reports, as one run, and prints
# the raw output with a header naming the machine, its load and the
# commit. make bench-report saves it to docs/benchmarks-raw.txt and
# renders the page from it. Needs root (real cgroups), and the API server
# and Prometheus the quota benchmark starts (make test's prerequisites).
set -euo pipefail
go=${GO:-go}
echo "# date: $(date -u +%F)"
echo "# commit: $(git describe --always --dirty)"
echo "# machine: $(nproc) vCPU $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r), $($go env GOVERSION)"
echo "# load before the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
run() {
	echo "\$ $*"
	"$@" 2>&1 | grep -E '^(Benchmark|node |accuracy |mutation |sensitivity |bench-accuracy)' || true
}
run $go test -run '^$' -bench . -benchmem -benchtime 1s ./pkg/vgpu ./pkg/exporter ./pkg/sampler
run $go test -run '^$' -bench 'GetPreferredAllocation' -benchmem ./pkg/deviceplugin
run $go test -run '^$' -bench 'AllocateGRPC' -benchmem -benchtime 3s -count 2 ./pkg/deviceplugin
run $go test -run '^$' -bench 'ExecToRegistered|Reregister' -benchtime 20x ./cmd/gpu-agent
run $go test -run '^$' -bench 'IdleRSS' -benchtime 3x ./cmd/gpu-agent
run $go test -run '^$' -bench 'RSSUnderHostileClients' -benchtime 1x ./cmd/gpu-agent
run $go test -run '^$' -bench 'AgentAPIRequests' -benchtime 1x -timeout 20m ./cmd/gpu-agent
run $go test -run '^$' -bench '^BenchmarkNode$' -benchtime 1x -timeout 10m ./cmd/gpu-agent
run $go test -run '^$' -bench 'MemoryOverrunToKill' -benchtime 10x ./pkg/enforce
run $go test -run '^$' -bench 'ForkBombTimeOverLimit' -benchtime 3x ./pkg/enforce
run $go test -run '^$' -bench 'FreezerTransitions' -benchtime 50x ./pkg/enforce
run $go test -run '^$' -bench 'DriverLimitOnCgroupCreation' -benchtime 200x ./pkg/enforce
run $go test -run '^$' -bench 'EvaluationCycle' -benchtime 20x -timeout 10m ./pkg/quota
run $go test -run '^$' -bench '^BenchmarkPrepare$' -benchtime 500x ./pkg/dra
run $go test -run '^$' -bench 'PluginAtEightGPUs' -benchtime 5x ./pkg/draplugin
run $go run ./test/accuracy/cmd/bench-accuracy --sensitivity
echo "# load after the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
