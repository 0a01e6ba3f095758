#!/usr/bin/env bash
# Extraction on Ray against one process (README, "Feature extraction"): the first N items (default 2001) of the
# catalogue, each engine into its own fresh cache that holds only the exported trunk, one after the other; then the
# two caches are compared entry by entry (benchmarks/compare_caches.py).
#
#   benchmarks/extract_ray.sh            # DATA, N, LEVELS, VESTIS (the vestis command) may be set
set -euo pipefail
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
N=${N:-2001}
LEVELS=${LEVELS:-s8,s16,s32}
VESTIS=${VESTIS:-.venv/bin/vestis}
PY=${PY:-$(dirname "$VESTIS")/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# the exported trunk first, so neither timed run pays for the export
$VESTIS extract "$DATA" --limit 1 --levels "$LEVELS" --cache "$TMP/local" > /dev/null
cp -r "$TMP/local" "$TMP/ray"
echo "one process, start: $(uptime)"
$VESTIS extract "$DATA" --limit "$N" --levels "$LEVELS" --cache "$TMP/local"
echo "Ray, start: $(uptime)"
$VESTIS extract "$DATA" --limit "$N" --levels "$LEVELS" --cache "$TMP/ray" --engine ray
echo "end: $(uptime)"
$PY benchmarks/compare_caches.py "$TMP/local" "$TMP/ray" --levels "$LEVELS"
