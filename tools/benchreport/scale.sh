#!/usr/bin/env bash
# Runs the cluster-scale benchmark (test/scale, BenchmarkClusterScale) as
# one run and prints its raw output with a header naming the machine, its
# load and the commit. make bench-scale saves it to docs/scale-raw.txt and
# renders docs/benchmarks.md from it. Needs the API server (make test's
# prerequisites), Prometheus and promtool, and bin/scale-blocks and
# bin/gpu-quota-controller built (make bench-scale builds them).
set -euo pipefail
go=${GO:-go}
bin=${BIN:-bin}
echo "# date: $(date -u +%F)"
echo "# commit: $(git describe --always --dirty)"
echo "# machine: $(nproc) vCPU $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r), $($go env GOVERSION), $(prometheus --version 2>&1 | head -1)"
echo "# load before the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
echo "\$ $go test -run '^\$' -bench ClusterScale -benchtime 1x ./test/scale"
GPUSLICE_BLOCKS="$PWD/$bin/scale-blocks" GPUSLICE_QUOTA_CONTROLLER="$PWD/$bin/gpu-quota-controller" \
	$go test -run '^$' -bench ClusterScale -benchtime 1x -timeout 150m -v ./test/scale 2>&1 |
	grep -E '^(Benchmark|    scale_test.go)' | sed -E 's/^    scale_test.go:[0-9]+: /# /'
echo "# load after the run (1, 5, 15 min): $(cut -d' ' -f1-3 /proc/loadavg)"
