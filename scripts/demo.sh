#!/usr/bin/env bash
# The main job end to end on the embedded corpus: install, prepare data, train a small CPU model with torchrun
# (2 processes), export int6+brotli, score the reloaded artifact, pack it as a non-record entry and check it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
$PY -m data.prepare
set -a; . presets/cpu_demo.env; set +a
$PY train_gpt.py --check  # a bad setting: one error line and exit 2 here, before torchrun starts any worker
OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc_per_node="${NPROC:-2}" train_gpt.py
$PY -m records demo "logs/${RUN_ID}.json"
