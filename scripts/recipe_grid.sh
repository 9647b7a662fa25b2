#!/usr/bin/env bash
# The recipe measurement grid: every recipe on one checkpoint, two sweeps side by side.
#   FFN grid:  2.5 / 5 / 10 / 20 % of the FFN neurons of every FFN module (attention untouched)
#   all grid:  2.5 / 5 / 10 % of all compressible parameters (heads + FFN neurons)
# usage: scripts/recipe_grid.sh MODEL_DIR DATA OUT [DEVICE] [extra sweep options, e.g. --limit 20]
# DEVICE is where the models are evaluated (cpu or cuda); compression uses the Rust CPU engine.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 MODEL_DIR DATA OUT [DEVICE] [sweep options]" >&2
    exit 2
fi
model=$1 data=$2 out=$3 device=${4:-cpu}
shift $(($# < 4 ? $# : 4))
cp=${CLUSTERPRUNE:-clusterprune}
ffn_recipes=${FFN_RECIPES:-paper,magnitude,datafree,datafree-comp,datafree-refit,cosine}
all_recipes=${ALL_RECIPES:-paper,magnitude,datafree-comp,datafree-heads,cosine}
$cp sweep "$model" --data "$data" --out "$out/ffn" --include 'ffn$' --budget units \
    --sparsities "${FFN_SPARSITIES:-0.025,0.05,0.1,0.2}" --methods "$ffn_recipes" --allocations recipe \
    --device "$device" --no-progress "$@" >"$out.ffn.log" 2>&1 &
ffn=$!
$cp sweep "$model" --data "$data" --out "$out/all" --budget params \
    --sparsities "${ALL_SPARSITIES:-0.025,0.05,0.1}" --methods "$all_recipes" --allocations recipe \
    --device "$device" --no-progress "$@" >"$out.all.log" 2>&1 &
all=$!
status=0
wait $ffn || status=1
wait $all || status=1
tail -n 40 "$out.ffn.log" "$out.all.log"
exit $status
