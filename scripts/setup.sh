#!/usr/bin/env bash
# Create .venv and install the pinned requirements once (again only when requirements.txt changes).
# torch==2.13.0 takes the local CPU wheel where the machine offers one (pip find-links); on a CPU machine without
# one, set TORCH_INDEX=https://download.pytorch.org/whl/cpu so that pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ requirements.txt -nt .venv/.installed ]; then
  echo "setup: installing pinned requirements into .venv (first run only)"
  if [ -n "${TORCH_INDEX:-}" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check --index-url "$TORCH_INDEX" torch==2.13.0
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  touch .venv/.installed
fi
