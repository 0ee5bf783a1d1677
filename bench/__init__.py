"""The kit's benchmarks (bench/README.md): each script measures one thing against a fixed point of comparison.

Run them from the repository root as modules (``python -m bench.bench_train ...``) or as files from anywhere
(``python bench/bench_train.py ...``). A file run imports ``bench/_path.py`` first, the one bootstrap that puts the
repository root on ``sys.path``; after that every script imports ``bench.common`` (configuration, data, devices,
output), ``bench.runs`` (training runs as subprocesses) and ``kitlib`` as ordinary packages.
"""
