#!/bin/sh
# build.sh [OUTDIR]: builds the measuring binaries into OUTDIR (default: bin/ at the
# repository's root, which git ignores): herald-gateway (the gateway as released; its
# -debug-addr serves pprof), herald-bench (the load tool) and baseline (the classic
# gorilla hub to compare with). Measure these, never "go run".
set -eu
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${1:-$root/bin}
mkdir -p "$out"
cd "$root"
go build -o "$out/" ./gateway/cmd/herald-gateway ./gateway/cmd/herald-bench ./gateway/cmd/herald-bench/baseline
echo "built into $out: herald-gateway herald-bench baseline"
