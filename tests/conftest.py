"""Shared fixtures: the embedded dataset built once per test session, and the kit's train_gpt module."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kitlib.scripts import load_script  # noqa: E402

# A model small enough to train in seconds on two CPU cores.
TINY_ENV = {
    "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "ITERATIONS": "3",
    "WARMUP_STEPS": "0", "TRAIN_BATCH_TOKENS": "4096", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64",
    "EVAL_STRIDE": "32", "EVAL_BATCH_SEQS": "256", "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "1",
    "MAX_WALLCLOCK_SECONDS": "0", "WARMDOWN_ITERS": "2", "SEED": "1",
}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """(data_path, tokenizer_path) of the embedded default corpus, vocabulary 1024."""
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, "-m", "data.prepare", "--out-dir", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    return out / "datasets" / "wiki_sp1024", out / "tokenizers" / "wiki_1024_bpe.model"


SHORT_VAL_TOKENS = 12_000  # short_dataset: whole validation documents up to the first BOS at or after this index


@pytest.fixture(scope="session")
def short_dataset(dataset, tmp_path_factory):
    """(data_path, tokenizer_path): the embedded dataset with its validation shard cut to whole documents (about
    SHORT_VAL_TOKENS), the train shard the same. For tests that need a real run and *a* score, not the full split's
    (a run validates and scores the whole split: the cut makes it ~8x shorter). No manifest.json (a supported case)."""
    import numpy as np
    from data.shards import read_shard, write_shard
    data_path, tok = dataset
    val = read_shard(data_path / "fineweb_val_000000.bin")
    starts = np.flatnonzero(val == 1)
    cut = int(starts[np.searchsorted(starts, SHORT_VAL_TOKENS)])
    out = tmp_path_factory.mktemp("short") / "wiki_sp1024_short"
    out.mkdir()
    write_shard(out / "fineweb_val_000000.bin", val[:cut])
    (out / "fineweb_train_000000.bin").symlink_to(data_path / "fineweb_train_000000.bin")
    return out, tok


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once process `pid` no longer exists (polls until `timeout` seconds)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def gone():
    """`gone(pid, timeout=10)`: True once the process has ended (for kill tests)."""
    return process_gone


@pytest.fixture(scope="session")
def tg():
    """train_gpt.py imported as the module `train_gpt`."""
    return load_script(ROOT / "train_gpt.py", "train_gpt")


def start_script(env: dict, cwd: Path, nproc: int = 1, script: Path = ROOT / "train_gpt.py") -> subprocess.Popen:
    """Start train_gpt.py (through torchrun when nproc > 1) with a clean environment plus `env`; returns at once
    (runs can overlap with each other and with work in the test)."""
    full = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR")}
    full.update(env)
    full.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, str(script)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    return subprocess.Popen(cmd, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_script(env: dict, cwd: Path, nproc: int = 1, script: Path = ROOT / "train_gpt.py",
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train_gpt.py to the end (see start_script)."""
    proc = start_script(env, cwd, nproc, script)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
