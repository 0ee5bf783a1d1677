"""A run's settings in words, for the README and technique_summary, and which differ from the script's defaults.

Defaults and meanings come from the script that ran: its ``SETTINGS`` (the kit's declarations: name, default,
meaning), else ``Hyperparameters.from_env({}).as_dict()`` and its ``FLAGS`` rows (an older kit, or another
script), imported by path with ``kitlib.scripts`` in a subprocess (the script imports torch, and a crash there must
not take pack down). When the script cannot be imported, no default is known and every setting is listed.
Records adds only what the settings do not say: the names under which techniques are known in the records
(``SHORT``), for the one-line technique summary.
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
# Settings that place a run rather than configure the model: left out of the technique summary.
PLACE_KEYS = ("DATA_PATH", "TOKENIZER_PATH", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY")

# setting -> the name the records use for it in a technique summary ("{v}": the value)
SHORT: dict[str, str] = {
    "VALUE_RESIDUAL": "Value Residual", "GATED_ATTENTION": "Gated Attention", "REVIEW_RESIDUAL": "Review Residual",
    "HIGHWAY": "Highway", "PPMC": "PPM-C mixer", "SMEAR_GATE": "SmearGate", "BIGRAM_HASH": "BigramHash",
    "ORTHO_INIT": "OrthoInit", "XSA_LAST_N": "XSA", "ROPE_DIMS": "Partial RoPE", "LN_SCALE": "LN Scale",
    "EMA": "EMA", "MUON_WD": "Muon WD", "ADAM_WD": "Adam WD", "TTT": "score-first TTT", "QUANT_BITS": "int{v}",
}

KIT_ROOT = Path(__file__).resolve().parents[1]  # where kitlib is

_DEFAULTS_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
from kitlib.scripts import load_script
mod = load_script(sys.argv[1])
settings = getattr(mod, "SETTINGS", None)
if settings:
    defaults = {s.name: s.default for s in settings}
    meanings = {s.name: s.meaning for s in settings}
else:
    defaults = mod.Hyperparameters.from_env({}).as_dict()
    meanings = {}
    for row in getattr(mod, "FLAGS", []) or []:
        try:
            if isinstance(row[0], str) and isinstance(row[-1], str):
                meanings[row[0]] = row[-1]
        except (TypeError, IndexError):
            pass
print("RECORDS_DEFAULTS " + json.dumps({"defaults": defaults, "meanings": meanings}, default=str))
"""


def script_defaults(script: Path, timeout: float = 180.0) -> tuple[dict | None, str, dict]:
    """({ENV: default}, how, {ENV: meaning}) from the script's own SETTINGS (or Hyperparameters and FLAGS);
    (None, why, {}) on failure.

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
                return d["defaults"], f"{Path(script).name}'s settings", meanings
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
    """One README bullet for a non-default setting, with the script's own meaning of it."""
    phrase = (meanings or {}).get(key, "")
    dflt = "unknown" if default is None else env_value(default)
    text = f"`{key}={env_value(value)}` (default {dflt})"
    if phrase:
        text += f": {phrase}"
    if _as_num(value) == 0.0 and _as_num(default) not in (None, 0.0) and phrase:
        text += " (turned off)"
    return text


def technique_summary(changes: list[tuple[str, object, object]]) -> str:
    """"Value Residual + Gated Attention + NUM_LAYERS 10": techniques by their records name, other settings as
    NAME value; where the run's data and logging went is left out."""
    parts = []
    for key, value, default in changes:
        if key in PLACE_KEYS:
            continue
        short = SHORT.get(key, key)
        num = _as_num(value)
        if "{v}" in short:
            parts.append(short.format(v=env_value(value)))
        elif key in SHORT and num == 1.0 and isinstance(value, (bool, int)) and _as_num(default) in (0.0, None):
            parts.append(short)  # an on/off technique turned on
        elif key in SHORT and num == 0.0 and _as_num(default) not in (None, 0.0) and isinstance(value, (bool, int)):
            parts.append(f"no {short}")
        else:
            parts.append(f"{short} {env_value(value)}")
    return " + ".join(parts) if parts else "kit default configuration"
