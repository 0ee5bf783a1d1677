"""Shared pieces of the benchmarks: the kit imported by path, configurations, arguments checked before any work, data
paths, devices, tables and the optional Markdown record (bench/RESULTS.md, only with --record).

Nothing here starts work on a device by itself; every benchmark prints what it measured and on what.
"""
from __future__ import annotations

if not __package__:  # imported as plain `common` from bench/: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

from kitlib.cli import ArgumentParser  # noqa: F401 - the benchmarks' parser (one error line, exit 2)
from kitlib.fileio import unwritable, write_atomic
from kitlib.scripts import ScriptError, load_script

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


class BenchError(SystemExit):
    """A problem with the inputs: one `error:` line on stderr (printed when raised), exit status 2."""

    def __init__(self, msg: str):
        print(f"error: {msg}", file=sys.stderr, flush=True)
        super().__init__(2)
        self.msg = msg


# ------------------------------------------------------------------------------------------------------------------
# The kit and its configuration
# ------------------------------------------------------------------------------------------------------------------

def import_kit(path: Path = KIT, option: str = "--kit"):
    """train_gpt.py imported as the module `train_gpt` (main() does not run on import)."""
    try:
        return load_script(path, "train_gpt")
    except ScriptError as err:
        raise BenchError(f"{option}: {err}") from None


def import_other(path: str | Path, option: str = "--other"):
    """Another script imported by path under a private module name (the kit keeps `train_gpt`); a missing file or
    a failing import is one error line naming `option`."""
    try:
        return load_script(path)
    except ScriptError as err:
        raise BenchError(f"{option}: {err}") from None


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
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise BenchError(f"preset {path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise BenchError(f"preset {path} is not a text file of KEY=VALUE lines") from None
    if "\x00" in text:
        raise BenchError(f"preset {path} is not a text file of KEY=VALUE lines (it holds NUL bytes)")
    env = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise BenchError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        key, value = line.split("=", 1)
        if not key.strip().isidentifier():
            raise BenchError(f"{path}:{n}: {key.strip()!r} is not a setting name")
        env[key.strip()] = value.strip().strip("'\"")
    return env


def parse_overrides(items, option: str = "--env") -> dict:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BenchError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def kit_settings(kit) -> set[str]:
    """The environment names the kit reads: its SETTINGS and their aliases."""
    return {s.name for s in kit.SETTINGS} | set(kit.ALIASES)


def unknown_settings(kit, env: dict, where: str) -> str | None:
    """Why `env` names something the kit does not read (a name it does not read would be benchmarked as if it
    changed something), or None."""
    unknown = sorted(set(env) - kit_settings(kit))
    if not unknown:
        return None
    what = "is not a setting" if len(unknown) == 1 else "are not settings"
    return f"{where}: {', '.join(unknown)} {what} of {Path(kit.__file__).name} (see its settings table)"


def check_settings(kit, env: dict, where: str) -> None:
    """Every key of `env` must be a setting of the kit (one error line otherwise)."""
    why = unknown_settings(kit, env, where)
    if why:
        raise BenchError(why)


def check_args(a, *, at_least: dict | None = None, writable: tuple = ()) -> None:
    """Numbers in range and output paths writable, before any work: one error line naming the option."""
    for name, lo in (at_least or {}).items():
        v = getattr(a, name, None)
        if v is not None and not (math.isfinite(v) and v >= lo):
            raise BenchError(f"--{name.replace('_', '-')} {v} must be at least {lo}")
    for name in writable:
        v = getattr(a, name, None)
        if v:
            why = unwritable(v)
            if why:
                raise BenchError(f"--{name.replace('_', '-')} {v}: {why}")
    if getattr(a, "record", False):
        why = unwritable(a.results)
        if why:
            raise BenchError(f"--record: {why}")


def preset_env(name: str, kit) -> dict:
    """baseline: the upstream baseline's shape and batch (= the kit's defaults), written out explicitly;
    record: presets/record.env; tiny: TINY_ENV; anything else: a KEY=VALUE file."""
    if name == "baseline":
        defaults = {s.name: s.default for s in kit.SETTINGS}
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
    """The kit's Hyperparameters for `env` (a bad value or a near-miss of a setting's name is one error line)."""
    try:
        return kit.Hyperparameters.from_env(env)
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None


def load_tokenizer(kit, hp):
    """The kit's SentencePiece model for `hp` (one that does not fit the configuration is one error line)."""
    try:
        return kit.load_tokenizer(hp)
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None


def artifact_env(kit, artifact: str | Path, env_items=()) -> tuple[dict, dict]:
    """(tensors, env) of a kit artifact: its state and the configuration it was made with, --env on top; an artifact
    that is missing or not the kit's is one error line."""
    art = Path(artifact)
    if not art.is_file():
        raise BenchError(f"--artifact {artifact} does not exist" if not art.exists() else
                         f"--artifact {artifact} is not a file")
    try:
        state, meta = kit.unpack_artifact(art.read_bytes(), str(art))
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - anything else an unreadable artifact raises is one line too
        raise BenchError(f"--artifact {artifact} is not an artifact of this kit ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    names = kit_settings(kit)
    env = {k: fmt(v) for k, v in (meta.get("config") or {}).items() if k in names and k not in ("RUN_ID", "EVAL_ONLY")}
    env.update(parse_overrides(env_items))
    return state, env


def model_from(kit, hp, state: dict | None, artifact: str | None = None, perturb_weights: bool = True,
               device=None):
    """The kit's model for `hp` (its attention kernel the best for `device`): the artifact's weights loaded, else the
    random init (+ noise, see perturb)."""
    model = kit.build_model(hp, device)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise BenchError(f"--artifact {artifact} does not fit the model built from its config: "
                             f"{str(err).splitlines()[0]}") from None
    elif perturb_weights:
        perturb(model, hp.seed)
    return model


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


def val_target_bytes(kit, hp, sp, val, data: Path):
    """The bytes of each target val[1:], as the kit scores them: from the val byte sidecar when DATA_PATH holds one
    (CaseOps data), else from the tokenizer's byte table; `val` may be the val stream cut short (load_val)."""
    import numpy as np
    if not hasattr(kit, "val_byte_counts"):
        return kit.target_bytes(val, kit.byte_tables(sp))
    full = np.concatenate([kit.load_shard(f) for f in kit.shard_files(str(data), "val")])
    hp.data_path = str(data)
    try:
        return kit.val_byte_counts(hp, full, sp)[0][:val.size - 1]
    except kit.ConfigError as err:
        raise BenchError(str(err)) from None


def load_val(kit, data: Path, max_tokens: int = 0, vocab_size: int | None = None):
    """The val shards concatenated (uint16 numpy), cut to max_tokens when > 0; a shard that is not one (empty,
    truncated, foreign), fewer than two tokens, or ids >= vocab_size is one error line."""
    import numpy as np
    try:
        val = np.concatenate([kit.load_shard(f) for f in kit.shard_files(str(data), "val")])
    except (kit.ConfigError, OSError) as err:
        raise BenchError(str(err)) from None
    val = val[:max_tokens] if max_tokens and max_tokens > 0 else val
    if val.size < 2:
        raise BenchError(f"the val shards in {data} hold {val.size} token(s); scoring needs at least 2")
    if vocab_size is not None and int(val.max()) >= vocab_size:
        raise BenchError(f"val tokens reach id {int(val.max())} >= VOCAB_SIZE={vocab_size}")
    return val


def load_tokens(kit, path: str | Path, option: str = "--shard"):
    """The tokens of one shard file (the kit's format, checked: header, magic, length); one error line else."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{option} {path}: no such file" if not p.exists() else f"{option} {path} is not a file")
    try:
        tokens = kit.load_shard(p)
    except (kit.ConfigError, OSError) as err:
        raise BenchError(f"{option}: {err}") from None
    if tokens.size == 0:  # an older kit's load_shard accepts an empty shard
        raise BenchError(f"{option} {path} holds 0 tokens")
    return tokens


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
    """What the kit's start of a run does once the device is known (TF32 and the flash SDPA kernel on CUDA). Returns
    the name of the attention kernel the kit's build_model(args, device) picks there."""
    import torch
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    return kit.attention_kernel(device)[0]


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
    write_atomic(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())
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


def verdict(line: str, worst: dict, tolerance: dict, blind: list) -> int:
    """An equivalence bench's ending: each figure over its tolerance and each sensitivity change that went
    undetected on stderr, then the summary line; exit status 1 when there is either."""
    over = [k for k, tol in tolerance.items() if not worst[k] <= tol]
    for k in over:
        print(f"over tolerance: {k}={worst[k]:.3g} > {tolerance[k]:g}", file=sys.stderr)
    for c in blind:
        print(f"not detected: the kit with {c} stays within tolerance", file=sys.stderr)
    print(line)
    return 1 if over or blind else 0
