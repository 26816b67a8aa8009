#!/usr/bin/env bash
# Set up, then the main job on built-in demo data: generate a demo category, build its bank
# (the default method, rgb+fpfh), evaluate it and print the table.
# RGB weights: PATCHBANK_WEIGHTS=/path/to/wide_resnet50_2.safetensors if you have them; without them
# (no network here) the backbone is randomly initialised, on purpose and logged, so the demo runs anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PATCHBANK_DATA_ROOT=${PATCHBANK_DATA_ROOT:-$PWD/demo/data}
export PATCHBANK_BANKS=${PATCHBANK_BANKS:-$PWD/demo/banks}
category=${DEMO_CATEGORY:-puck}

.venv/bin/make-demo-data "$PATCHBANK_DATA_ROOT" --categories "$category" --train 30 --validation 8 --test 6 --size 400
weights=()
[[ -n ${PATCHBANK_WEIGHTS:-} ]] || weights=(--random-weights 0)
.venv/bin/build-bank --category "$category" "${weights[@]}"
