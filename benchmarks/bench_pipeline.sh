#!/usr/bin/env bash
# Time `bash run.sh` end to end on a fresh clone: the set-up (virtualenv, install) apart from the
# pipeline (data, train, score, submit), and report the default run's epoch-end health check.
#
#   bash benchmarks/bench_pipeline.sh [extra run.sh arguments]
#
# The clone goes to a temporary directory; the pip cache of this machine is used if present.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/track1"
cd "$work/track1"
start=$(date +%s)
bash run.sh --setup > /dev/null 2>&1
setup_end=$(date +%s)
bash run.sh "$@" 2>&1 | tr '\r' '\n' | grep -v -i -E "warn|^\s*$|it/s\]$|step/s\]$|arch/s\]$" | tee "$work/log" | grep -E "^\[run.sh\]|epoch|scored|wrote" || true
end=$(date +%s)
echo
echo "machine: $(nproc) cores, $(python3 --version 2>&1), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "bash run.sh $*: $((end - setup_end)) s wall, set-up excluded (set-up: $((setup_end - start)) s)"
grep -E "^epoch" "$work/log" | tail -1 | sed 's/^/final epoch-end check (full test set, BN re-calibrated): /'
grep -E "^scored" "$work/log" | tail -1
ls submit/*.json >/dev/null && .venv/bin/python -m track1 validate submit/*.json --arch-list output/*/demo_arch_list.json 2>/dev/null || true
