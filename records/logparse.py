"""Reading training logs: the kit's text log and JSON run file, and upstream variants.

The kit's formats are fixed by docs/CONTRACT.md. Public records use older or different
spellings (``step:`` prefix or not, ``train_time: 588047ms`` with a space, no code hash, a
score line without the ``_exact`` suffix); the parser reads what it can and records what it
could not in ``RunLog.problems`` instead of raising. Nothing here ever raises on bad input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------
# Regular expressions, one per log line family.

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|NaN|inf|-inf"

RE_RUN_ID = re.compile(r"^run_id:\s*(\S+)\s*$")
RE_CODE = re.compile(r"code_sha256:\s*([0-9a-fA-F]{64})(?:\s+code_bytes:\s*(\d+))?")
RE_VERSIONS = re.compile(r"^versions:\s*(.*)$")
RE_PAIR = re.compile(r"(\w+):(\S+)")
RE_DEVICE = re.compile(
    r"^device:\s*(\S+)\s+gpu:\s*(.*?)\s+world_size:\s*(\d+)"
    r"(?:\s+grad_accum_steps:\s*(\d+))?(?:\s+attention:\s*(\S+))?(?:\s+compile:\s*(.*?))?\s*$"
)
RE_CONFIG = re.compile(r"^config:\s*(\{.*\})\s*$")
RE_PARAMS = re.compile(r"^model_params:\s*(\d+)")
RE_STEP = re.compile(r"^(?:step:\s*)?(\d+)/(\d+)\s+(train_loss|val_loss):\s*(" + _NUM + r")")
RE_TRAIN_TIME = re.compile(r"train_time:\s*(" + _NUM + r")ms")
RE_STEP_AVG = re.compile(r"step_avg:\s*(" + _NUM + r")ms")
RE_STOP = re.compile(r"^stopping_early:.*?train_time:\s*(" + _NUM + r")ms(?:.*?step:\s*(\d+)/(\d+))?")
RE_SERIALIZED = re.compile(r"^Serialized model(?: ([^:]*?))?:\s*(\d+) bytes")
RE_CODE_SIZE = re.compile(r"^Code size:\s*(\d+) bytes")
RE_TOTAL = re.compile(r"^Total submission size(?: ([^:]*?))?:\s*(\d+) bytes")
RE_EXACT = re.compile(
    r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*_exact)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")"
)
RE_INEXACT = re.compile(
    r"^([A-Za-z][A-Za-z0-9_\- ]*?)\s+val_loss:\s*(" + _NUM + r")\s+val_bpb:\s*(" + _NUM + r")"
)
RE_EVAL_TOTAL = re.compile(r"^eval_time_total:\s*(" + _NUM + r")ms")
RE_EVAL_TIME = re.compile(r"eval_time:\s*(" + _NUM + r")ms")
RE_SEED = re.compile(r"^\s*seed:\s*(\d+)\s*$")
RE_SEED_NAME = re.compile(r"seed[_\-]?(\d+)", re.IGNORECASE)
# Some upstream logs prefix every line with a timestamp ("1776142360.538 ", "[2026-04-14 04:52:28] ").
RE_STAMP = re.compile(r"^(?:\d{9,}(?:\.\d+)?\s+|\[[0-9T:\-. ]{8,}\]\s*)")

FLOAT_PREFIX = "final_float"  # diagnostic pre-quantisation score lines start with this


def _f(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _i(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


@dataclasses.dataclass
class Score:
    metric: str
    val_loss: float | None
    val_bpb: float | None
    exact: bool = True  # False: taken from a line without the ``_exact`` suffix


@dataclasses.dataclass
class RunLog:
    """Everything one run's log (and JSON run file, when there is one) says."""

    text_path: Path | None = None
    json_path: Path | None = None
    run_id: str | None = None
    seed: int | None = None
    code_sha256: str | None = None
    code_bytes: int | None = None  # from the code_sha256 line or "Code size:"
    versions: dict = dataclasses.field(default_factory=dict)
    device: str | None = None
    gpu_name: str | None = None
    world_size: int | None = None
    grad_accum_steps: int | None = None
    attention: str | None = None
    compile_mode: str | None = None
    config: dict | None = None
    num_params: int | None = None
    steps: int | None = None
    iterations: int | None = None
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    stopped_early: bool = False
    model_bytes: int | None = None
    artifact_bytes: int | None = None  # "Total submission size": model + code
    scores: list = dataclasses.field(default_factory=list)  # [Score] in log order
    final: Score | None = None
    pre_quant: Score | None = None
    eval_time_ms: float | None = None
    status: str | None = None  # the JSON's status; None for a text-only log
    over_budget: bool | None = None
    has_training_lines: bool = False
    problems: list = dataclasses.field(default_factory=list)  # what could not be read
    conflicts: list = dataclasses.field(default_factory=list)  # text vs JSON disagreements

    @property
    def name(self) -> str:
        p = self.text_path or self.json_path
        return p.name if p else "<log>"

    @property
    def torch_version(self) -> str | None:
        v = self.versions.get("torch") if isinstance(self.versions, dict) else None
        return str(v) if v is not None else None

    @property
    def complete(self) -> bool:
        if self.json_path is not None and self.status != "complete":
            return False
        return self.final is not None and self.final.exact

    @property
    def eval_time_s(self) -> float | None:
        return None if self.eval_time_ms is None else self.eval_time_ms / 1000.0

    @property
    def train_time_s(self) -> float | None:
        return None if self.train_time_ms is None else self.train_time_ms / 1000.0


# --------------------------------------------------------------------------------------
# Text logs


def read_text(path: Path) -> tuple[str | None, str | None]:
    """(text, error). Undecodable bytes are replaced, never fatal."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    return data.decode("utf-8", errors="replace"), None


def parse_text_log(text: str, path: Path | None = None) -> RunLog:
    run = RunLog(text_path=Path(path) if path is not None else None)
    after_total = False
    eval_after_total = 0.0
    eval_after_total_seen = False
    inexact: list[Score] = []
    last_step_line: tuple[int, int, float | None, float | None] | None = None
    for raw in text.splitlines():
        line = RE_STAMP.sub("", raw.strip(), count=1)
        if not line:
            continue
        try:
            _parse_line(run, line)
        except Exception as exc:  # noqa: BLE001 - a parser must never crash on odd lines
            run.problems.append(f"unreadable line {line[:60]!r}: {exc}")
            continue
        m = RE_STEP.match(line)
        if m:
            run.has_training_lines = True
            s, n = int(m.group(1)), int(m.group(2))
            tt = RE_TRAIN_TIME.search(line)
            sa = RE_STEP_AVG.search(line)
            last_step_line = (s, n, _f(tt.group(1)) if tt else None, _f(sa.group(1)) if sa else None)
            continue
        m = RE_TOTAL.match(line)
        if m:
            after_total = True
            eval_after_total = 0.0
            eval_after_total_seen = False
            continue
        m = RE_EXACT.search(line)
        if m:
            continue  # handled in _parse_line
        m = RE_INEXACT.match(line)
        if m and not line.startswith("step"):
            inexact.append(Score(m.group(1).strip(), _f(m.group(2)), _f(m.group(3)), exact=False))
            if after_total:
                et = RE_EVAL_TIME.search(line)
                if et and _f(et.group(1)) is not None:
                    eval_after_total += _f(et.group(1))
                    eval_after_total_seen = True
            continue
        if after_total:
            et = RE_EVAL_TIME.search(line)
            if et and _f(et.group(1)) is not None:
                eval_after_total += _f(et.group(1))
                eval_after_total_seen = True

    if last_step_line is not None:
        s, n, tt, sa = last_step_line
        if run.steps is None or s > run.steps:
            run.steps = s
        run.iterations = run.iterations or n
        if run.train_time_ms is None and tt is not None:
            run.train_time_ms = tt
        if sa is not None:
            run.step_avg_ms = sa
    # The LAST final_*_exact line is the score (CONTRACT.md); upstream's legal_ttt_exact too.
    exact = [s for s in run.scores if s.exact]
    scoring = [s for s in exact if not s.metric.startswith(FLOAT_PREFIX)] or exact
    if scoring:
        run.final = scoring[-1]
    elif inexact:
        # Older upstream logs: the last "<phase> val_loss:X val_bpb:Y" line, marked inexact.
        cand = [s for s in inexact if "pre" not in s.metric.lower()]
        run.final = (cand or inexact)[-1]
    floats = [s for s in exact if s.metric.startswith(FLOAT_PREFIX)]
    if floats:
        run.pre_quant = floats[-1]
    else:
        pre = [s for s in inexact if "pre" in s.metric.lower() and "quant" in s.metric.lower()]
        if pre:
            run.pre_quant = pre[-1]
    if run.eval_time_ms is None and eval_after_total_seen:
        run.eval_time_ms = eval_after_total
    if run.seed is None and isinstance(run.config, dict):
        run.seed = _i(run.config.get("SEED"))
    if run.seed is None and path is not None:
        m = RE_SEED_NAME.search(Path(path).name)
        if m:
            run.seed = int(m.group(1))
    return run


def _parse_line(run: RunLog, line: str) -> None:
    m = RE_RUN_ID.match(line)
    if m:
        run.run_id = m.group(1)
        return
    m = RE_CODE.search(line)
    if m and line.startswith("code_sha256"):
        run.code_sha256 = m.group(1).lower()
        if m.group(2):
            run.code_bytes = int(m.group(2))
        return
    m = RE_VERSIONS.match(line)
    if m:
        run.versions = dict(RE_PAIR.findall(m.group(1)))
        return
    m = RE_DEVICE.match(line)
    if m:
        run.device = m.group(1)
        gpu = m.group(2).strip()
        run.gpu_name = None if gpu in ("", "none") else gpu
        run.world_size = int(m.group(3))
        run.grad_accum_steps = int(m.group(4)) if m.group(4) else None
        run.attention = m.group(5)
        run.compile_mode = m.group(6)
        return
    m = RE_CONFIG.match(line)
    if m:
        try:
            cfg = json.loads(m.group(1))
        except ValueError as exc:
            run.problems.append(f"config line is not JSON: {exc}")
            return
        if isinstance(cfg, dict):
            run.config = cfg
        else:
            run.problems.append("config line is not a JSON object")
        return
    m = RE_PARAMS.match(line)
    if m:
        run.num_params = int(m.group(1))
        return
    m = RE_STOP.match(line)
    if m:
        run.stopped_early = True
        run.train_time_ms = _f(m.group(1))
        if m.group(2):
            run.steps = int(m.group(2))
            run.iterations = int(m.group(3))
        return
    m = RE_SERIALIZED.match(line)
    if m:
        run.model_bytes = int(m.group(2))
        return
    m = RE_CODE_SIZE.match(line)
    if m:
        if run.code_bytes is None:
            run.code_bytes = int(m.group(1))
        return
    m = RE_TOTAL.match(line)
    if m:
        run.artifact_bytes = int(m.group(2))
        return
    m = RE_EXACT.search(line)
    if m:
        run.scores.append(Score(m.group(1), _f(m.group(2)), _f(m.group(3)), exact=True))
        return
    m = RE_EVAL_TOTAL.match(line)
    if m:
        run.eval_time_ms = _f(m.group(1))
        return
    m = RE_SEED.match(line)
    if m and run.seed is None:
        run.seed = int(m.group(1))
        return


# --------------------------------------------------------------------------------------
# JSON run files (logs/<RUN_ID>.json)


def parse_run_json(obj: Any, run: RunLog) -> None:
    """Overlay a JSON run file onto ``run`` (the JSON is authoritative where it speaks)."""
    if not isinstance(obj, dict):
        run.problems.append("run JSON is not an object")
        return
    run.status = obj.get("status") if isinstance(obj.get("status"), str) else None

    def take(attr: str, value: Any, conv) -> None:
        v = conv(value)
        if v is None:
            return
        old = getattr(run, attr)
        # Identity fields must agree exactly; timings and names are printed rounded or
        # reformatted in the text (train_time:37109ms vs 37109.38, gpu name with "_").
        if attr in _IDENTITY and old is not None and old != v:
            run.conflicts.append(f"{attr}: text log says {old!r}, JSON says {v!r}")
        setattr(run, attr, v)

    take("run_id", obj.get("run_id"), lambda v: v if isinstance(v, str) else None)
    take("seed", obj.get("seed"), _i)
    take("code_sha256", obj.get("code_sha256"), lambda v: v.lower() if isinstance(v, str) else None)
    take("code_bytes", obj.get("code_bytes"), _i)
    take("model_bytes", obj.get("model_bytes"), _i)
    take("artifact_bytes", obj.get("artifact_bytes"), _i)
    take("world_size", obj.get("world_size"), _i)
    take("device", obj.get("device"), lambda v: v if isinstance(v, str) else None)
    take("gpu_name", obj.get("gpu_name"), lambda v: v if isinstance(v, str) and v != "none" else None)
    take("num_params", obj.get("num_params"), _i)
    take("steps", obj.get("steps"), _i)
    take("iterations", obj.get("iterations"), _i)
    take("train_time_ms", obj.get("train_time_ms"), _num)
    take("step_avg_ms", obj.get("step_avg_ms"), _num)
    take("eval_time_ms", obj.get("eval_time_ms"), _num)
    if isinstance(obj.get("attention_kernel"), str):
        run.attention = obj["attention_kernel"]
    if isinstance(obj.get("compile_mode"), str):
        run.compile_mode = obj["compile_mode"]
    if isinstance(obj.get("stopped_early"), bool):
        run.stopped_early = obj["stopped_early"]
    if isinstance(obj.get("over_budget"), bool):
        run.over_budget = obj["over_budget"]
    if isinstance(obj.get("versions"), dict):
        run.versions = {str(k): str(v) for k, v in obj["versions"].items()}
    cfg = obj.get("config")
    if isinstance(cfg, dict):
        if run.config is not None and run.config != cfg:
            run.conflicts.append("config: text log and JSON differ")
        run.config = cfg
    final = obj.get("final")
    if isinstance(final, dict):
        loss, bpb = _num(final.get("val_loss")), _num(final.get("val_bpb"))
        metric = final.get("metric") if isinstance(final.get("metric"), str) else "final"
        if run.final is not None and run.final.exact:
            if not (_close(run.final.val_loss, loss, 5e-9) and _close(run.final.val_bpb, bpb, 5e-9)):
                run.conflicts.append(
                    f"final score: text log says {run.final.val_loss}/{run.final.val_bpb}, JSON says {loss}/{bpb}"
                )
        if loss is not None and bpb is not None:
            line = final.get("line")
            name = metric
            if isinstance(line, str):
                m = RE_EXACT.search(line) or re.match(r"^\s*([A-Za-z][A-Za-z0-9_]*_exact)\b", line)
                if m:
                    name = m.group(1)
            run.final = Score(name, loss, bpb, exact=True)
    scores = obj.get("scores")
    if isinstance(scores, dict) and isinstance(scores.get("float_sliding_window"), dict):
        s = scores["float_sliding_window"]
        if _num(s.get("val_loss")) is not None and _num(s.get("val_bpb")) is not None:
            run.pre_quant = Score("final_float_sliding_window_exact", _num(s["val_loss"]), _num(s["val_bpb"]))
    if run.seed is None and isinstance(run.config, dict):
        run.seed = _i(run.config.get("SEED"))


_IDENTITY = {"run_id", "seed", "code_sha256", "code_bytes", "model_bytes", "artifact_bytes", "world_size", "device"}


def _close(a: Any, b: Any, tol: float = 1e-9) -> bool:
    try:
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# Entry points


def sibling_paths(path: Path) -> tuple[Path | None, Path | None]:
    """(text, json) for logs/<id>.txt, logs/<id>.log or logs/<id>.json."""
    path = Path(path)
    if path.suffix == ".json":
        for suf in (".txt", ".log"):
            cand = path.with_suffix(suf)
            if cand.exists():
                return cand, path
        return None, path
    cand = path.with_suffix(".json")
    return path, (cand if cand.exists() else None)


def load_run(path: Path) -> RunLog:
    """Read a run from its text log and/or JSON sibling. Never raises."""
    text_path, json_path = sibling_paths(Path(path))
    run = RunLog()
    if text_path is not None:
        text, err = read_text(text_path)
        if err:
            run.problems.append(err)
            run.text_path = text_path
        else:
            run = parse_text_log(text, text_path)
    if json_path is not None:
        run.json_path = json_path
        try:
            obj = json.loads(Path(json_path).read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError) as exc:
            run.problems.append(f"cannot read run JSON {json_path.name}: {exc}")
            run.status = None
        else:
            parse_run_json(obj, run)
    return run


def load_text_log(path: Path) -> RunLog:
    text, err = read_text(path)
    if err:
        run = RunLog(text_path=Path(path))
        run.problems.append(err)
        return run
    return parse_text_log(text, path)
