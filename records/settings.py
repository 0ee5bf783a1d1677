"""A run's settings in words: what each setting does, for the README and technique_summary, and which differ from
the script's defaults.

Defaults come from the script that ran (``Hyperparameters.from_env({}).as_dict()``, imported by path with
``kitlib.scripts`` in a subprocess: the script imports torch, and a crash there must not take pack down);
``BUILTIN_DEFAULTS`` (the upstream baseline's values) is only a fallback when the script cannot be imported.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

# Keys that identify a run rather than configure it: they may differ between seeds.
RUN_IDENTITY_KEYS = ("SEED", "RUN_ID")

# setting -> (short name for technique_summary, phrase for README)
PHRASES: dict[str, tuple[str, str]] = {
    "VALUE_RESIDUAL": ("Value Residual", "value residual (ResFormer): every layer mixes layer 0's values into its own with two learned scalars"),
    "GATED_ATTENTION": ("Gated Attention", "head-wise sigmoid gate on each attention head's output, from the sublayer's normalised input"),
    "REVIEW_RESIDUAL": ("Review Residual", "review residual: each sublayer's update is gated by sigma(W [rms(x); rms(u)]), conditioned on the update itself"),
    "REVIEW_GATE": ("Review gate", "shape of the review-residual gate (per-channel, low-rank, per-head or scalar)"),
    "REVIEW_RANK": ("Review rank", "rank of the low-rank review gate"),
    "REVIEW_BIAS_INIT": ("Review bias init", "initial bias of the review gate (0: r = 0.5; +4: r ~ 1)"),
    "HIGHWAY": ("Highway", "highway residual: state-only gate sigma(W x + b) on each sublayer's update"),
    "PPMC": ("PPM-C mixer", "PPM-C context mixer at evaluation, mixed with the network in probability space"),
    "PPMC_ORDER": ("PPM order", "order of the PPM-C context model"),
    "PPMC_ALPHA": ("PPM alpha", "weight of the network in the PPM-C mixture"),
    "PPMC_EXCLUSION": ("PPM exclusion", "PPM-C exclusion of symbols offered by higher orders"),
    "SMEAR_GATE": ("SmearGate", "SmearGate: each position blends in the previous position's embedding through a learned gate"),
    "BIGRAM_HASH": ("BigramHash", "hashed bigram embedding of (previous, current) input tokens added to the token embedding"),
    "BIGRAM_BUCKETS": ("BigramHash buckets", "number of BigramHash buckets"),
    "ORTHO_INIT": ("OrthoInit", "orthogonal initialisation of the large linear layers"),
    "XSA_LAST_N": ("XSA", "exclusive self-attention on the last N layers (removes the self-value component)"),
    "ROPE_DIMS": ("Partial RoPE", "rotary embedding on only the first k dimensions of each head"),
    "ROPE_BASE": ("RoPE base", "RoPE base frequency"),
    "LN_SCALE": ("LN Scale", "each sublayer's normalised input scaled by 1/sqrt(layer + 1)"),
    "EMA": ("EMA", "exponential moving average of the weights, swapped in before export"),
    "EMA_DECAY": ("EMA decay", "EMA decay per step"),
    "MUON_WD": ("Muon WD", "decoupled weight decay on Muon-updated matrices"),
    "ADAM_WD": ("Adam WD", "weight decay on Adam-updated parameters"),
    "LEAKY_RELU": ("LeakyReLU^2", "LeakyReLU(0.5)^2 MLP activation instead of ReLU^2"),
    "MLP_MULT": ("MLP mult", "MLP hidden width as a multiple of the model width"),
    "NUM_LAYERS": ("layers", "number of transformer blocks"),
    "MODEL_DIM": ("width", "model width"),
    "NUM_HEADS": ("heads", "query heads"),
    "NUM_KV_HEADS": ("KV heads", "key/value heads (GQA)"),
    "VOCAB_SIZE": ("vocab", "tokenizer vocabulary size"),
    "TIE_EMBEDDINGS": ("tied embeddings", "input and output embeddings tied"),
    "LOGIT_SOFTCAP": ("softcap", "logit softcap c in c * tanh(z / c)"),
    "QK_GAIN_INIT": ("QK gain", "initial per-head query gain"),
    "TRAIN_SEQ_LEN": ("train seq", "training sequence length"),
    "TRAIN_BATCH_TOKENS": ("batch tokens", "tokens per optimiser step"),
    "ITERATIONS": ("iterations", "maximum number of training steps"),
    "WARMUP_STEPS": ("warmup", "compile warm-up steps (then reset)"),
    "WARMDOWN_ITERS": ("warmdown", "learning-rate warmdown length in steps"),
    "WARMDOWN_FRAC": ("warmdown frac", "learning-rate warmdown as a fraction of training"),
    "MAX_WALLCLOCK_SECONDS": ("wallclock cap", "training wallclock cap in seconds"),
    "MATRIX_LR": ("matrix LR", "Muon learning rate for block matrices"),
    "SCALAR_LR": ("scalar LR", "Adam learning rate for scalars and control tensors"),
    "TIED_EMBED_LR": ("embed LR", "Adam learning rate for the tied embedding"),
    "EMBED_LR": ("embed LR", "Adam learning rate for the embedding"),
    "HEAD_LR": ("head LR", "Adam learning rate for the output head"),
    "MUON_MOMENTUM": ("Muon momentum", "Muon momentum after warm-up"),
    "MUON_MOMENTUM_WARMUP_START": ("Muon momentum start", "Muon momentum at the start of its warm-up"),
    "MUON_MOMENTUM_WARMUP_STEPS": ("Muon momentum warm-up", "steps of Muon momentum warm-up"),
    "MUON_BACKEND_STEPS": ("NS steps", "Newton-Schulz iterations per Muon update"),
    "GRAD_CLIP_NORM": ("grad clip", "gradient-norm clipping"),
    "QUANT_BITS": ("int{v}", "export quantisation bits per weight"),
    "GPTQ_LITE": ("GPTQ-lite", "per-row clip-percentile search at export (lowest reconstruction error)"),
    "GPTQ": ("GPTQ", "Hessian-based GPTQ at export, calibrated on training data inside the time budget"),
    "COMPRESSOR": ("compressor", "compressor of the exported model"),
    "EVAL_STRIDE": ("sliding eval stride", "sliding-window evaluation stride"),
    "EVAL_SEQ_LEN": ("eval seq", "evaluation window length"),
    "TTT": ("score-first TTT", "legal score-first test-time training: each chunk is scored, then trained on"),
    "TTT_LR": ("TTT LR", "test-time-training learning rate"),
    "TTT_EPOCHS": ("TTT epochs", "test-time-training epochs per chunk"),
    "TTT_CHUNK_TOKENS": ("TTT chunk", "test-time-training chunk length in tokens"),
    "TTT_MOMENTUM": ("TTT momentum", "test-time-training SGD momentum"),
    "DATA_PATH": ("data", "training/validation shard folder"),
    "TOKENIZER_PATH": ("tokenizer", "SentencePiece model"),
    "VAL_LOSS_EVERY": ("val every", "steps between validation passes during training"),
    "TRAIN_LOG_EVERY": ("log every", "steps between training-loss log lines"),
    "COMPILE": ("compile", "torch.compile mode"),
}

# Upstream baseline defaults (CHALLENGE.md): a fallback only.
BUILTIN_DEFAULTS: dict[str, object] = {
    "NUM_LAYERS": 9, "MODEL_DIM": 512, "NUM_HEADS": 8, "NUM_KV_HEADS": 4, "MLP_MULT": 2,
    "VOCAB_SIZE": 1024, "TIE_EMBEDDINGS": 1, "LOGIT_SOFTCAP": 30.0, "ROPE_BASE": 10000.0,
    "QK_GAIN_INIT": 1.5, "TRAIN_SEQ_LEN": 1024, "TRAIN_BATCH_TOKENS": 524288, "ITERATIONS": 20000,
    "WARMUP_STEPS": 20, "WARMDOWN_ITERS": 1200, "MAX_WALLCLOCK_SECONDS": 600.0, "MATRIX_LR": 0.04,
    "SCALAR_LR": 0.04, "TIED_EMBED_LR": 0.05, "MUON_MOMENTUM": 0.95, "MUON_BACKEND_STEPS": 5,
    "MUON_MOMENTUM_WARMUP_START": 0.85, "MUON_MOMENTUM_WARMUP_STEPS": 500,
    "VALUE_RESIDUAL": 0, "GATED_ATTENTION": 0, "REVIEW_RESIDUAL": 0, "HIGHWAY": 0, "PPMC": 0,
    "SMEAR_GATE": 0, "BIGRAM_HASH": 0, "ORTHO_INIT": 0, "XSA_LAST_N": 0, "LN_SCALE": 0, "EMA": 0,
    "MUON_WD": 0.0, "LEAKY_RELU": 0, "TTT": 0, "GPTQ_LITE": 0,
}

KIT_ROOT = Path(__file__).resolve().parents[1]  # where kitlib is

_DEFAULTS_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from kitlib.scripts import load_script
mod = load_script(sys.argv[1])
meanings = {}
for row in getattr(mod, "FLAGS", []) or []:
    try:
        if isinstance(row[0], str) and isinstance(row[-1], str):
            meanings[row[0]] = row[-1]
    except (TypeError, IndexError):
        pass
out = {"defaults": mod.Hyperparameters.from_env({}).as_dict(), "meanings": meanings}
print("RECORDS_DEFAULTS " + json.dumps(out, default=str))
"""


def script_defaults(script: Path, timeout: float = 180.0) -> tuple[dict | None, str, dict]:
    """({ENV: default}, how, {ENV: meaning}) from the script's own Hyperparameters (and FLAGS table,
    when it has one); (None, why, {}) on failure.

    Runs in a subprocess (the script imports torch; a crash there must not take pack down).
    Importing runs module-level code only: ``main()`` is guarded by ``__name__``.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DEFAULTS_PROBE, str(Path(script).resolve()), str(KIT_ROOT)],
            capture_output=True, text=True, timeout=timeout, cwd=str(Path(script).resolve().parent),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"could not import {Path(script).name}: {exc}", {}
    for line in proc.stdout.splitlines():
        if line.startswith("RECORDS_DEFAULTS "):
            try:
                d = json.loads(line[len("RECORDS_DEFAULTS "):])
            except ValueError:
                break
            if isinstance(d, dict) and isinstance(d.get("defaults"), dict):
                meanings = d.get("meanings") if isinstance(d.get("meanings"), dict) else {}
                return d["defaults"], f"{Path(script).name}: Hyperparameters.from_env({{}})", meanings
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"could not read defaults from {Path(script).name}: {err[:200]}", {}


def same_value(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return _as_num(a) == _as_num(b) if _as_num(a) is not None and _as_num(b) is not None else a == b
    na, nb = _as_num(a), _as_num(b)
    if na is not None and nb is not None:
        return math.isclose(na, nb, rel_tol=1e-12, abs_tol=0.0) or na == nb
    return str(a) == str(b)


def _as_num(v: object) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "false"):
            return 1.0 if s == "true" else 0.0
        try:
            return float(s)
        except ValueError:
            return None
    return None


def non_default(config: dict, defaults: dict) -> list[tuple[str, object, object]]:
    """[(KEY, value, default or None if unknown)] for settings that differ from the defaults."""
    out = []
    for key in sorted(config):
        if key in RUN_IDENTITY_KEYS:
            continue
        value = config[key]
        if key in defaults:
            if not same_value(value, defaults[key]):
                out.append((key, value, defaults[key]))
        else:
            out.append((key, value, None))
    return out


def env_value(value: object) -> str:
    """How a config value is written as an environment assignment."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return shlex.quote(json.dumps(value, separators=(",", ":")))
    return shlex.quote(str(value))


def describe(key: str, value: object, default: object, meanings: dict | None = None) -> str:
    """One README bullet for a non-default setting (our phrase, else the script's own FLAGS meaning)."""
    short, phrase = PHRASES.get(key, (key, (meanings or {}).get(key, "")))
    dflt = "unknown" if default is None else env_value(default)
    text = f"`{key}={env_value(value)}` (default {dflt})"
    if phrase:
        text += f": {phrase}"
    if _as_num(value) == 0.0 and _as_num(default) not in (None, 0.0) and phrase:
        text += " (turned off)"
    return text


def technique_summary(changes: list[tuple[str, object, object]]) -> str:
    parts = []
    for key, value, default in changes:
        if key in ("DATA_PATH", "TOKENIZER_PATH", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY"):
            continue
        short, _ = PHRASES.get(key, (key, ""))
        num = _as_num(value)
        if "{v}" in short:
            parts.append(short.format(v=env_value(value)))
        elif num == 1.0 and isinstance(value, (bool, int)) and _as_num(default) in (0.0, None):
            parts.append(short)  # an on/off flag turned on
        elif num == 0.0 and _as_num(default) not in (None, 0.0) and key in PHRASES and isinstance(value, (bool, int)):
            parts.append(f"no {short}")
        else:
            parts.append(f"{short} {env_value(value)}")
    return " + ".join(parts) if parts else "kit default configuration"
