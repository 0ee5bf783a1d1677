"""Shared pieces of the benchmarks: the kit imported by path, configurations, data paths, devices, tables and the
optional Markdown record (bench/RESULTS.md, only with --record).

Nothing here starts work on a device by itself; every benchmark prints what it measured and on what.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "train_gpt.py"
RESULTS = ROOT / "bench" / "RESULTS.md"
OFFICIAL_VAL_TOKENS = 62_021_632  # sp1024 val, as used after truncation (CHALLENGE.md)

# The CI smoke-test configuration: a model that trains a step in well under a second on one CPU core.
TINY_ENV = {
    "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "64",
    "TRAIN_BATCH_TOKENS": "4096", "ITERATIONS": "6", "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "64",
    "VAL_LOSS_EVERY": "0", "WARMUP_STEPS": "0",
}
# Settings that fix the upstream baseline's shape and batch. --preset baseline passes them explicitly (at the kit's
# defaults, which are the upstream baseline's) so that a script with other defaults still trains the same model.
BASELINE_KEYS = ("VOCAB_SIZE", "NUM_LAYERS", "MODEL_DIM", "NUM_HEADS", "NUM_KV_HEADS", "MLP_MULT", "TIE_EMBEDDINGS",
                 "TRAIN_BATCH_TOKENS", "TRAIN_SEQ_LEN", "WARMUP_STEPS", "SEED")
# Never inherited from the caller's shell by a benchmark's subprocess (a stray NUM_LAYERS would change the run).
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
            "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


class BenchError(SystemExit):
    """A problem with the inputs: one `error:` line on stderr (printed when raised), exit status 2."""

    def __init__(self, msg: str):
        print(f"error: {msg}", file=sys.stderr, flush=True)
        super().__init__(2)
        self.msg = msg


# ------------------------------------------------------------------------------------------------------------------
# The kit and its configuration
# ------------------------------------------------------------------------------------------------------------------

def import_kit(path: Path = KIT):
    """train_gpt.py imported as the module `train_gpt` (main() does not run on import)."""
    path = Path(path).resolve()
    mod = sys.modules.get("train_gpt")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    if not path.is_file():
        raise BenchError(f"{path} does not exist")
    spec = importlib.util.spec_from_file_location("train_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpt"] = mod
    spec.loader.exec_module(mod)
    return mod


def import_other(path: str | Path, option: str = "--other"):
    """Another script imported by path under a private module name (the kit keeps `train_gpt`); a missing file or
    a failing import is one error line naming `option`."""
    path = Path(path).resolve()
    if not path.is_file():
        raise BenchError(f"{option} {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"bench_other_{file_sha(path)[:12]}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as err:  # noqa: BLE001 - any failure to import is one error line
        raise BenchError(f"{option} {path} cannot be imported ({type(err).__name__}: {err})") from None
    return mod


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_kit_like(path: Path) -> bool:
    """A train_gpt.py of this kit (any version): it reads FLOAT_EVAL and runs on the CPU."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return ('("FLOAT_EVAL", int' in text and '("DEVICE", str' in text) or \
        ("float_eval: int = S(" in text and "device: str = S(" in text)


def fmt(value) -> str:
    """An environment value: bools as 0/1, whole floats without '.0' (upstream parses MLP_MULT with int())."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def read_env_file(path: Path) -> dict:
    """KEY=VALUE lines (blank lines and # comments ignored; optional `export `; quotes stripped)."""
    env = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise BenchError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        key, value = line.split("=", 1)
        env[key.strip()] = value.strip().strip("'\"")
    return env


def parse_overrides(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BenchError(f"--env {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def preset_env(name: str, kit) -> dict:
    """baseline: the upstream baseline's shape and batch (= the kit's defaults), written out explicitly;
    record: presets/record.env; tiny: TINY_ENV; anything else: a KEY=VALUE file."""
    if name == "baseline":
        defaults = {f[0]: f[2] for f in kit.FLAGS}
        return {k: fmt(defaults[k]) for k in BASELINE_KEYS}
    if name == "tiny":
        return dict(TINY_ENV)
    path = ROOT / "presets" / "record.env" if name == "record" else Path(name)
    if not path.is_file():
        hint = " (no record preset in this checkout: use --preset baseline, a KEY=VALUE file, or --env)" \
            if name == "record" else ""
        raise BenchError(f"preset {name!r}: {path} not found{hint}")
    return read_env_file(path)


def kit_args(kit, env: dict):
    """The kit's Hyperparameters for `env`. Keys the kit does not know are ignored (they may be another script's),
    except near-misses of its flags, which the kit reports as typos."""
    try:
        return kit.Hyperparameters.from_env(env)
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None


def add_config_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--tiny", action="store_true",
                    help="tiny CPU configuration for smoke tests (NUM_LAYERS=2 MODEL_DIM=64 seq 64 ...)")
    ap.add_argument("--preset", default="baseline",
                    help="baseline (default: upstream baseline shape, 524,288 tokens/step, seq 1024), record "
                         "(presets/record.env) or a KEY=VALUE file")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VAL",
                    help="configuration override (repeatable); wins over the preset")
    ap.add_argument("--data-path", default=None,
                    help="folder of fineweb_{train,val}_*.bin (default: DATA_PATH of the preset, then "
                         "data/datasets/fineweb10B_sp1024, then data/datasets/wiki_sp1024)")
    ap.add_argument("--tokenizer-path", default=None,
                    help="SentencePiece model (default: from the dataset's manifest.json, else TOKENIZER_PATH)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--record", action="store_true", help="append a row to bench/RESULTS.md")
    ap.add_argument("--results", default=str(RESULTS), help=argparse.SUPPRESS)  # tests redirect the record


def base_env(args, kit) -> dict:
    env = preset_env("tiny" if args.tiny else args.preset, kit)
    env.update(parse_overrides(args.env))
    return env


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------

def _existing(p: str | Path, want_dir: bool) -> Path | None:
    p = Path(p).expanduser()
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, ROOT / p]):
        if (cand.is_dir() if want_dir else cand.is_file()):
            return cand.resolve()
    return None


def resolve_data(data_arg: str | None, tok_arg: str | None, env: dict) -> tuple[Path, Path]:
    """(shard folder, tokenizer) as absolute paths; explicit arguments must exist, defaults are searched."""
    if data_arg:
        data = _existing(data_arg, True)
        if data is None:
            raise BenchError(f"--data-path {data_arg} is not a folder")
    else:
        tried = [c for c in (env.get("DATA_PATH"), "data/datasets/fineweb10B_sp1024", "data/datasets/wiki_sp1024") if c]
        data = next((d for d in (_existing(c, True) for c in tried) if d and any(d.glob("fineweb_val_*.bin"))), None)
        if data is None:
            raise BenchError(f"no shards found (tried {', '.join(tried)}); build them with `python -m data.prepare` "
                             "or pass --data-path")
    if not any(data.glob("fineweb_val_*.bin")):
        raise BenchError(f"no fineweb_val_*.bin shards in {data}")
    if tok_arg:
        tok = _existing(tok_arg, False)
        if tok is None:
            raise BenchError(f"--tokenizer-path {tok_arg} does not exist")
        return data, tok
    cands = []
    manifest = data / "manifest.json"
    if manifest.is_file():
        try:
            rel = (json.loads(manifest.read_text()).get("tokenizer") or {}).get("file")
        except (ValueError, AttributeError):
            rel = None
        if rel:
            cands.append(data.parent.parent / rel)
    if env.get("TOKENIZER_PATH"):
        cands.append(env["TOKENIZER_PATH"])
    cands.append("data/tokenizers/fineweb_1024_bpe.model")
    for c in cands:
        tok = _existing(c, False)
        if tok:
            return data, tok
    models = sorted((data.parent.parent / "tokenizers").glob("*.model"))
    if len(models) == 1:
        return data, models[0].resolve()
    raise BenchError(f"no tokenizer found for {data} (tried {', '.join(map(str, cands))}); pass --tokenizer-path")


def load_val(kit, data: Path, max_tokens: int = 0):
    """The val shards concatenated (uint16 numpy), cut to max_tokens when > 0."""
    import numpy as np
    val = np.concatenate([kit.load_shard(f) for f in kit.shard_files(str(data), "val")])
    return val[:max_tokens] if max_tokens and max_tokens > 0 else val


# ------------------------------------------------------------------------------------------------------------------
# Devices and models
# ------------------------------------------------------------------------------------------------------------------

def pick_device(name: str = "auto"):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but no CUDA device is visible")
    return torch.device("cuda", torch.cuda.current_device()) if name == "cuda" else torch.device("cpu")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device=None, count: int = 1, threads: int | None = None) -> str:
    """GPU name (torch.cuda.get_device_name) or the CPU model from /proc/cpuinfo, with the count used."""
    import torch
    if (device is None and torch.cuda.is_available()) or (device is not None and torch.device(device).type == "cuda"):
        name = torch.cuda.get_device_name(torch.device(device) if device is not None else None)
        return f"{count}x {name}" if count > 1 else name
    threads = threads or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()
    procs = f", {count} processes" if count > 1 else ""
    return f"CPU: {cpu_name()} ({os.cpu_count()} cores, {threads} threads{'/process' if procs else ''}{procs})"


def setup_device(kit, device) -> str:
    """What the kit's main() does once the device is known: TF32 on CUDA, and the attention kernel. Returns its
    name."""
    import torch
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    kit.ATTENTION = kit.attention_kernel(device)
    return kit.ATTENTION[0]


def perturb(model, seed: int) -> None:
    """Add N(0, 1/fan_in) noise to every weight matrix. The kit zero-initialises the output projections, so a fresh
    model ignores its context; the noise makes attention (and hence the sliding-window context) matter, as in a
    trained model, and gives the quantiser realistic rows."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------------------------

def median(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def table(headers, rows) -> str:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(s: str) -> bool:
        return s.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("x", "").isdigit()
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def command_line() -> str:
    return "python " + shlex.join([os.path.relpath(sys.argv[0], Path.cwd()) if sys.argv else "?", *sys.argv[1:]])


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    print(f"wrote {path}")


def record(results: str | Path, benchmark: str, device: str, figures: str, kit_path: Path = KIT) -> None:
    """Append one Markdown row (date UTC, benchmark, device, kit sha, figures, command) to bench/RESULTS.md."""
    path = Path(results)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmark results\n\nOne row per invocation with `--record` (bench/common.py appends; "
                        "nothing else writes here). `kit` is the first 12 hex digits of train_gpt.py's sha256.\n\n"
                        "| date (UTC) | benchmark | device | kit | figures | command |\n"
                        "|---|---|---|---|---|---|\n")

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    row = [now_utc(), benchmark, device, file_sha(kit_path)[:12], figures, f"`{command_line()}`"]
    with open(path, "a", encoding="utf-8") as f:
        f.write("| " + " | ".join(cell(c) for c in row) + " |\n")
    print(f"recorded in {path}")
