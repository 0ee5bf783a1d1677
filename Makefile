# Two entry points for a fresh machine: `make demo` (the main job end to end) and `make test` (the suite).
PY      := .venv/bin/python
NPROC   ?= 2
PRESET  ?= presets/cpu_demo.env

.PHONY: setup demo test data clean
setup: .venv/.installed

.venv/.installed: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

data: setup
	$(PY) -m data.prepare

demo: data
	set -a && . ./$(PRESET) && set +a && OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --standalone \
	  --nproc_per_node=$(NPROC) train_gpt.py
	$(PY) -m records demo-summary logs/cpu_demo.json

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf logs artifacts .pytest_cache
