"""Shared fixtures: the embedded dataset built once per test session, and the kit's train_gpt module."""
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.shards import read_shard, write_shard  # noqa: E402
from kitlib.procs import script_command  # noqa: E402
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


def cut_val(data_path: Path, tokens: int, whole_docs: bool = False):
    """The first `tokens` tokens of the validation shard of `data_path` (whole_docs: up to the first BOS at or after
    that index instead, so that no document is cut)."""
    val = read_shard(data_path / "fineweb_val_000000.bin")
    if whole_docs:
        starts = np.flatnonzero(val == 1)
        tokens = int(starts[np.searchsorted(starts, tokens)])
    return val[:tokens]


def short_data(data_path: Path, out: Path, val, train: bool = True) -> Path:
    """A data folder `out` (created if need be) holding `val` as its validation shard and (train) links to the train
    shards of `data_path`, not copies. No manifest.json (a supported case)."""
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "fineweb_val_000000.bin", val)
    for f in sorted(data_path.glob("fineweb_train_*.bin")) if train else ():
        (out / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="session")
def short_dataset(dataset, tmp_path_factory):
    """(data_path, tokenizer_path): the embedded dataset with its validation shard cut to whole documents (about
    SHORT_VAL_TOKENS), the train shard the same. For tests that need a real run and *a* score, not the full split's
    (a run validates and scores the whole split: the cut makes it ~8x shorter). No manifest.json (a supported case)."""
    data_path, tok = dataset
    out = tmp_path_factory.mktemp("short") / "wiki_sp1024_short"
    return short_data(data_path, out, cut_val(data_path, SHORT_VAL_TOKENS, whole_docs=True)), tok


def strs(over: dict) -> dict:
    """Settings as the environment holds them: every value a string."""
    return {k: str(v) for k, v in over.items()}


def tiny_args(tg, base: dict = TINY_ENV, **over):
    """Hyperparameters of `base` (the tiny model) at vocabulary 1024, with `over` on top."""
    return tg.Hyperparameters.from_env({**base, "VOCAB_SIZE": "1024", **strs(over)})


def data_env(dataset, run_id: str = "t", base: dict = TINY_ENV, **over) -> dict:
    """The environment of a run of `base` (the tiny model) on dataset = (data_path, tokenizer_path), `over` on top."""
    data_path, tok = dataset
    return {**base, "DATA_PATH": str(data_path), "TOKENIZER_PATH": str(tok), "RUN_ID": run_id, **strs(over)}


def set_run_env(tg, monkeypatch, cwd: Path, env: dict) -> None:
    """This process as a fresh `python train_gpt.py` in `cwd` would be: no setting and no rank variable of the
    outer environment, only `env`'s."""
    monkeypatch.chdir(cwd)
    drop = {s.name for s in tg.SETTINGS} | {"WORLD_SIZE", "RANK", "LOCAL_RANK"}
    for key in list(os.environ):
        if key.upper() in drop:
            monkeypatch.delenv(key)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))


def cli_in_process(tg, monkeypatch, cwd: Path, env: dict, argv: tuple = ()) -> tuple[int, str]:
    """train_gpt.py's entry point cli(argv) in this process (no interpreter start-up) with set_run_env:
    (exit code, stderr text); stdout is dropped."""
    set_run_env(tg, monkeypatch, cwd, env)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = tg.cli(list(argv))
    return rc, err.getvalue()


def random_weights(model, std: float = 0.05, seed: int = 0):
    """`model` with every parameter drawn from N(0, std) (zero-initialised projections would hide context use)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def reload_artifact(tg, path: Path):
    """(model, args, meta) of an artifact: the model built from the artifact's own config, its tensors loaded
    (strict: every tensor round-trips), in eval mode."""
    state, meta = tg.unpack_artifact(Path(path).read_bytes())
    args = tg.Hyperparameters.from_env(strs(meta["config"]))
    model = tg.build_model(args)
    model.load_state_dict(state)
    return model.eval(), args, meta


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a loaded two-core machine (no spinning); the
    subprocess runs use OMP_NUM_THREADS=1 as well, so in-process scores are computed the same way. A module that
    wants it says `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def start_script(env: dict, cwd: Path, nproc: int = 1, script: Path = ROOT / "train_gpt.py", args: tuple = (),
                 output=subprocess.PIPE) -> subprocess.Popen:
    """Start train_gpt.py (through torchrun when nproc > 1) with command-line `args`, a clean environment plus `env`,
    stdout and stderr to `output`; returns at once (runs can overlap with each other and with work in the test)."""
    full = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR")}
    full.update(env)
    full.setdefault("OMP_NUM_THREADS", "1")
    cmd = [*script_command(script, nproc), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=full, stdout=output, stderr=output, text=True)


def run_script(env: dict, cwd: Path, nproc: int = 1, script: Path = ROOT / "train_gpt.py", args: tuple = (),
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train_gpt.py to the end (see start_script)."""
    return finish_script(start_script(env, cwd, nproc, script, args), timeout)


def finish_script(proc: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    """Wait for a started run (killed when it takes over `timeout` seconds): its exit code and output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
