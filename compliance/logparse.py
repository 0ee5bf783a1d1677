"""Reading training logs: the kit's text log and JSON run file (docs/CONTRACT.md), and upstream variants.

One parser serves the auditor (``compliance/rules/limits_logs.py`` and ``rules/stats.py`` check limits,
submission.json and significance on what it reads) and the record tool (``records/check.py``, ``records/pack.py``);
it imports nothing from ``records``.

The kit writes ``run_id:``, ``code_sha256:.. code_bytes:..``, ``versions:``, ``device:``, ``config:{json}``, step
lines, ``final_*_exact`` scores, ``eval_time_total:Nms`` and ``logs/<RUN_ID>.json`` beside the text. Upstream
logs spell things otherwise: ``step:S/N train_loss:X train_time:Tms step_avg:Ams`` or ``S/N train_loss: X
train_time: 9.8m``, ``stopping_early: wallclock_cap ...``, ``Serialized model ...: N bytes``, ``Code size[ (..)]: N
bytes``, ``Total submission size ...: N bytes``, score lines with or without the ``_exact`` suffix (``legal_ttt_exact``
too) and an ``eval_time:Nms``, ``total_eval_time:Ns``, a timestamp before every line, hyperparameter dumps,
``NAME=value`` settings, and the script itself above a ``=====`` rule. Values keep the number of the line they
came from (the auditor's evidence). Nothing here raises on bad input: what cannot be read goes to
``RunLog.problems``, and a text log and JSON that disagree to ``RunLog.conflicts``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

# --------------------------------------------------------------------------------------------------------------
# Regular expressions, one per log-line family

_NUM = r"(?:[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|NaN|inf|Inf))"
_TIME = r"(" + _NUM + r")\s*(ms|s|m|min)\b"
_BYTES = r"(\d[\d,]*)\s*bytes"
_LOSS_BPB = r"val_loss[:=]\s*(" + _NUM + r")\s+val_bpb[:=]\s*(" + _NUM + r")"

RE_STAMP = re.compile(r"^(?:\d{9,}(?:\.\d+)?\s|\[[0-9T:\-. ]{8,}\]\s?)")  # "1776142360.538 ", "[2026-04-14 04:52] "
RE_SCRIPT_HEAD = re.compile(r"^\s*(?:import|from|\"\"\"|#!)", re.M)
RE_RUN_ID = re.compile(r"^run_id:\s*(\S+)\s*$")
RE_CODE_HASH = re.compile(r"^code_sha256:\s*([0-9a-fA-F]{64})(?:\s+code_bytes:\s*(\d+))?")
RE_VERSIONS = re.compile(r"^versions:\s*(.*)$")
RE_PAIR = re.compile(r"(\w+):(\S+)")
RE_DEVICE = re.compile(
    r"^device:\s*(\S+)\s+gpu:\s*(.*?)\s+world_size:\s*(\d+)"
    r"(?:\s+grad_accum_steps:\s*(\d+))?(?:\s+attention:\s*(\S+))?(?:\s+compile:\s*(.*?))?\s*$"
)
RE_CONFIG = re.compile(r"^config:\s*(\{.*\})\s*$")
RE_PARAMS = re.compile(r"^model_params:\s*(\d+)")
RE_DUMP_HEAD = re.compile(r"^(?:hyperparameters|hparams|config|args|settings)\s*:?\s*$", re.I)
RE_DUMP_LINE = re.compile(r"^\s+([A-Za-z_]\w*)\s*[:=]\s*(.*?)\s*$")
RE_STEP = re.compile(r"^(?:step[:\s]*)?(\d+)/(\d+)\s+(?:train_loss|val_loss)[:=]\s*" + _NUM)
RE_TRAIN_TIME = re.compile(r"train_time[:=]\s*" + _TIME)
RE_STEP_AVG = re.compile(r"step_avg[:=]\s*(" + _NUM + r")\s*ms")
RE_STOP = re.compile(r"stopping_early:.*?train_time[:=]\s*" + _TIME + r"(?:.*?step[:=]\s*(\d+)/(\d+))?")
RE_MODEL = re.compile(r"^Serialized model[^:]*:\s*" + _BYTES, re.I)
RE_CODE_SIZE = re.compile(r"^Code size(?:\s*\(([^)]*)\))?\s*:\s*" + _BYTES, re.I)
RE_TOTAL = re.compile(r"^Total submission size[^:]*:\s*" + _BYTES, re.I)
RE_EVAL_TOTAL = re.compile(r"^(?:eval_time_total|total_eval_time)[:=]\s*" + _TIME)
RE_SEED = re.compile(r"^seed[:=]\s*(\d+)\s*$", re.I)
RE_SEED_NAME = re.compile(r"seed[_\-]?(\d+)", re.I)
_SETTINGS = r"(?:\s+[A-Za-z_]\w*[:=]\S+)*?"  # e.g. "stride:64" between a score's name and its val_loss
RE_EXACT = re.compile(r"(?:^|\s)([A-Za-z][\w\-]*_exact)" + _SETTINGS + r"[:\s]+" + _LOSS_BPB)
RE_EXACT_NAME = re.compile(r"^\s*([A-Za-z][\w\-]*_exact)\b")
RE_SCORE = re.compile(r"^([A-Za-z][\w\- ]*?)" + _SETTINGS + r"[:\s]+" + _LOSS_BPB)
RE_EVAL_TIME = re.compile(r"\b(?:eval_time|time)[:=]\s*(" + _NUM + r")\s*ms\b")
RE_OTHER_EVAL = re.compile(r"^([A-Za-z][\w\-]*)?.*?\beval_time[:=]\s*(" + _NUM + r")\s*ms\b")  # not a score line
RE_ENV_TOKEN = re.compile(r"(?<![\w.])([A-Z][A-Z0-9_]{2,})=([^\s,;'\"]+)")
RE_WORD_TOKEN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]{2,}):([A-Za-z][\w.\-]*)(?=[\s,;]|$)")  # ngram_cache:enabled
RE_ATTR_TOKEN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]{2,})[:=]\s*(True|False|None|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\b")
RE_CODE_LINE = re.compile(r"^\s*(def |class |import |from |return |if |elif |else:|for |while |with |try:|except|#|@"
                          r"|\)|\])|os\.environ|getenv| = |\+= |\bself\.")
RE_DIAG = re.compile(r"diagnostic|pre[_\- ]?quant|float|post_ema|post_ttt_diag|^step", re.I)  # not an eval phase

FLOAT_PREFIX = "final_float"  # the kit's diagnostic pre-quantisation score lines start with this
TEXT_SUFFIXES = (".log", ".txt", ".out")
MAX_TEXT_BYTES = 64 * 1024 * 1024
NOT_LOGS = ("submission.json", "requirements.txt")


# --------------------------------------------------------------------------------------------------------------
# Values


def _ms(value: str, unit: str) -> float:
    """Returns ``value`` in ``unit`` (ms, s, m or min) as milliseconds."""
    v = float(value)
    return v if unit == "ms" else v * 1000 if unit == "s" else v * 60000


def _bytes(text: str) -> int:
    """Returns a logged byte count ("15,790,795" or "15790795") as an int."""
    return int(text.replace(",", ""))


def _i(value: Any) -> int | None:
    """Returns ``value`` as an int when it is one (42, 42.0, "42"), else None; booleans are not ints here."""
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
    """Returns a JSON number as a float, None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _str(value: Any) -> str | None:
    """Returns ``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def _bool(value: Any) -> bool | None:
    """Returns ``value`` if it is a boolean, else None."""
    return value if isinstance(value, bool) else None


def _hex(value: Any) -> str | None:
    """Returns a hash string in lower case, None for anything but a string."""
    return value.lower() if isinstance(value, str) else None


def _gpu(value: Any) -> str | None:
    """Returns a GPU name, None for "none" or anything but a string."""
    return value if isinstance(value, str) and value != "none" else None


def _str_dict(value: Any) -> dict[str, str] | None:
    """Returns a JSON object with its keys and values as strings, None for anything but an object."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def _env_value(value: Any) -> str:
    """Returns a configuration value as the environment variable that set it would read ("1"/"0" for booleans)."""
    return "1" if value is True else "0" if value is False else str(value)


def parse_value(text: str) -> Any:
    """Returns a logged setting ('True', '0.5', '12', 'abc') as a Python value: bool, None, int, float or str."""
    t = text.strip()
    if t in ("True", "true"):
        return True
    if t in ("False", "false"):
        return False
    if t in ("None", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t.strip("'\"")


def _close(a: Any, b: Any, tol: float = 5e-9) -> bool:
    """Returns True when ``a`` and ``b`` are numbers within ``tol`` (relative above 1)."""
    try:
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------------------
# What a log says


class Score(NamedTuple):
    """One score line: ``(metric, val_loss, val_bpb, line)``; ``exact`` is False for a line without ``_exact``."""

    metric: str
    val_loss: float
    val_bpb: float
    line: int = 0  # 1-based line of the text log; 0 when the score came from the JSON
    exact: bool = True


@dataclasses.dataclass
class RunLog:
    """Everything one run's text log (and its JSON run file, when there is one) says.

    ``*_line`` fields are 1-based line numbers in ``lines`` (0: not from the text log)."""

    text_path: Path | None = None
    json_path: Path | None = None
    display: str | None = None  # the auditor's name for it: the path relative to the audited folder
    lines: list = dataclasses.field(default_factory=list)  # the text log's lines (a JSON excerpt without one)
    run_id: str | None = None
    seed: int | None = None
    code_sha256: str | None = None
    code_bytes: int | None = None  # from the code_sha256 line or "Code size:"
    code_compressed: int | None = None  # "Code size (compressed): N bytes"
    code_line: int = 0
    versions: dict = dataclasses.field(default_factory=dict)
    device: str | None = None
    gpu_name: str | None = None
    world_size: int | None = None
    grad_accum_steps: int | None = None
    attention: str | None = None
    compile_mode: str | None = None
    config: dict | None = None  # the kit's config:{json} line (or the JSON's config)
    env: dict = dataclasses.field(default_factory=dict)  # settings as environment strings: config, NAME=value
    attrs: dict = dataclasses.field(default_factory=dict)  # settings from hyperparameter dumps and name:value
    words: dict = dataclasses.field(default_factory=dict)  # name:word tokens (ngram_cache:enabled, model_preset:big)
    num_params: int | None = None
    steps: int | None = None
    iterations: int | None = None
    train_time_ms: float | None = None
    train_line: int = 0
    step_avg_ms: float | None = None
    stopped_early: bool = False
    has_training_lines: bool = False
    model_bytes: int | None = None
    artifact_bytes: int | None = None  # "Total submission size": model + code
    artifact_line: int = 0
    scores: list = dataclasses.field(default_factory=list)  # [Score] in log order
    final: Score | None = None
    pre_quant: Score | None = None
    eval_total_ms: float | None = None  # eval_time_total / total_eval_time line, or the JSON's eval_time_ms
    eval_total_line: int = 0
    eval_phases: list = dataclasses.field(default_factory=list)  # (label, ms, line) of each timed eval phase
    status: str | None = None  # the JSON's status; None for a text-only log
    over_budget: bool | None = None
    kit_json: bool = False  # a JSON run file (run_id with final or scores) was read
    problems: list = dataclasses.field(default_factory=list)  # what could not be read
    conflicts: list = dataclasses.field(default_factory=list)  # text vs JSON disagreements

    @property
    def name(self) -> str:
        """Returns the display name, else the text (or JSON) file's name, else "<log>"."""
        if self.display:
            return self.display
        p = self.text_path or self.json_path
        return p.name if p else "<log>"

    @property
    def recognised(self) -> bool:
        """Returns True when the log holds anything a training run writes (steps, scores, sizes, config)."""
        return (self.kit_json or self.has_training_lines or bool(self.scores) or self.stopped_early
                or self.artifact_bytes is not None or self.config is not None)

    @property
    def torch_version(self) -> str | None:
        """Returns the logged torch version, or None."""
        v = self.versions.get("torch") if isinstance(self.versions, dict) else None
        return str(v) if v is not None else None

    @property
    def complete(self) -> bool:
        """Returns True when the run finished: an exact final score, and status "complete" if there is a JSON."""
        if self.json_path is not None and self.status != "complete":
            return False
        return self.final is not None and self.final.exact

    @property
    def eval_time_ms(self) -> float | None:
        """Returns the logged total evaluation time, else the sum of the timed eval phases, else None."""
        if self.eval_total_ms is not None:
            return self.eval_total_ms
        return sum(ms for _, ms, _ in self.eval_phases) if self.eval_phases else None

    @property
    def eval_time_s(self) -> float | None:
        """Returns ``eval_time_ms`` in seconds, or None."""
        ms = self.eval_time_ms
        return None if ms is None else ms / 1000.0

    @property
    def train_time_s(self) -> float | None:
        """Returns the training time in seconds, or None."""
        return None if self.train_time_ms is None else self.train_time_ms / 1000.0

    def line(self, n: int) -> str:
        """Returns line ``n`` (1-based) of the text log, stripped; "" when there is no such line."""
        return self.lines[n - 1].strip() if 0 < n <= len(self.lines) else ""


# --------------------------------------------------------------------------------------------------------------
# Text logs


class _Reader:
    """Reads a text log into a RunLog: ``feed`` each line, then ``finish``."""

    def __init__(self, run: RunLog) -> None:
        self.run = run
        self.in_dump = False
        self.after_total = False
        self.last_step_line = 0
        self.last_step: tuple[int, int] | None = None  # (step, of N) of the last step line
        self.stop_step: tuple[int, int] | None = None  # ... and of the stopping_early line
        self.binary_lines: list[int] = []
        self.handlers: tuple[tuple[re.Pattern, Callable[[re.Match, int], bool]], ...] = (
            (RE_CONFIG, self._config), (RE_RUN_ID, self._run_id), (RE_CODE_HASH, self._code_hash),
            (RE_VERSIONS, self._versions), (RE_DEVICE, self._device), (RE_PARAMS, self._params),
            (RE_STOP, self._stop), (RE_STEP, self._step), (RE_TOTAL, self._total), (RE_MODEL, self._model),
            (RE_CODE_SIZE, self._code_size), (RE_EVAL_TOTAL, self._eval_total), (RE_SEED, self._seed),
        )

    def feed(self, i: int, raw: str) -> None:
        """Read line ``i`` (1-based); settings are taken from lines no handler consumed and that are not code."""
        stamp = RE_STAMP.match(raw.lstrip())
        body = raw.lstrip()[stamp.end():] if stamp else raw  # the line as written, without its timestamp
        line = body.strip()
        if not line:
            self.in_dump = False
            return
        if "\x00" in raw:
            self.binary_lines.append(i)
        dumped = self._dump(body, line)
        if self._structured(line, i) or dumped:
            return
        if not self._score(line, i) and self.after_total:
            self._other_eval(line, i)
        if not RE_CODE_LINE.search(body):
            for k, v in RE_ENV_TOKEN.findall(line):
                self.run.env.setdefault(k, v)
            for k, v in RE_ATTR_TOKEN.findall(line):
                self.run.attrs.setdefault(k, parse_value(v))
            for k, v in RE_WORD_TOKEN.findall(line):
                self.run.words.setdefault(k, v)

    def finish(self) -> None:
        """Settle what needs the whole log: steps, the final and pre-quantisation scores, the seed, binary lines."""
        run = self.run
        steps = [c for c in (self.stop_step, self.last_step) if c is not None]
        if steps:
            run.steps, run.iterations = max(s for s, _ in steps), steps[0][1]
        if self.binary_lines:
            run.problems.append(f"{len(self.binary_lines)} line(s) hold binary data (NUL bytes), "
                                f"the first is line {self.binary_lines[0]}")
        run.final = _pick_final(run.scores, self.last_step_line)
        run.pre_quant = _pick_pre_quant(run.scores)
        if run.seed is None:
            run.seed = _fallback_seed(run)

    def _dump(self, body: str, line: str) -> bool:
        """Returns True for a hyperparameter dump's header or one of its indented ``name: value`` lines."""
        if RE_DUMP_HEAD.match(line):
            self.in_dump = True
            return True
        if self.in_dump:
            m = RE_DUMP_LINE.match(body)
            if m:
                self.run.attrs[m.group(1)] = parse_value(m.group(2))
                return True
            self.in_dump = False
        return False

    def _structured(self, line: str, i: int) -> bool:
        """Returns True when a line handler consumed the line (the first family that matches reads it)."""
        for rx, handle in self.handlers:
            m = rx.search(line)
            if m:
                return handle(m, i)
        return False

    def _config(self, m: re.Match, i: int) -> bool:
        """The kit's ``config:{json}`` line. Returns True."""
        try:
            cfg = json.loads(m.group(1))
        except ValueError as exc:
            self.run.problems.append(f"config line is not JSON: {exc}")
            return True
        if not isinstance(cfg, dict):
            self.run.problems.append("config line is not a JSON object")
            return True
        self.run.config = cfg
        self.run.env.update({str(k): _env_value(v) for k, v in cfg.items()})
        return True

    def _run_id(self, m: re.Match, i: int) -> bool:
        """``run_id:<id>``. Returns False (settings may still be read from it)."""
        self.run.run_id = m.group(1)
        return False

    def _code_hash(self, m: re.Match, i: int) -> bool:
        """``code_sha256:<hex> code_bytes:<n>``. Returns True."""
        self.run.code_sha256 = m.group(1).lower()
        if m.group(2):
            self.run.code_bytes = int(m.group(2))
            self.run.code_line = i
        return True

    def _versions(self, m: re.Match, i: int) -> bool:
        """``versions: python:<v> torch:<v> ...``. Returns False."""
        self.run.versions = dict(RE_PAIR.findall(m.group(1)))
        return False

    def _device(self, m: re.Match, i: int) -> bool:
        """``device:<d> gpu:<name> world_size:<n> ...``. Returns False."""
        run = self.run
        gpu = m.group(2).strip()
        run.device, run.gpu_name, run.world_size = m.group(1), None if gpu in ("", "none") else gpu, int(m.group(3))
        run.grad_accum_steps = int(m.group(4)) if m.group(4) else None
        run.attention, run.compile_mode = m.group(5), m.group(6)
        return False

    def _params(self, m: re.Match, i: int) -> bool:
        """``model_params:<n>``. Returns False."""
        self.run.num_params = int(m.group(1))
        return False

    def _stop(self, m: re.Match, i: int) -> bool:
        """``stopping_early: wallclock_cap train_time:<t> step:<s>/<N>``. Returns True."""
        run = self.run
        run.stopped_early = True
        run.train_time_ms, run.train_line = _ms(m.group(1), m.group(2)), i
        if m.group(3):
            self.stop_step = int(m.group(3)), int(m.group(4))
        return True

    def _step(self, m: re.Match, i: int) -> bool:
        """A training or validation step line; the last one with a time gives the training time unless a
        stopping_early line did. Returns True."""
        run = self.run
        run.has_training_lines = True
        if run.eval_phases:  # training again after an evaluation: the log holds several runs; the last one counts
            run.eval_phases.clear()
            run.stopped_early, self.stop_step, self.after_total = False, None, False
        self.last_step = int(m.group(1)), int(m.group(2))
        tt = RE_TRAIN_TIME.search(m.string)
        if tt and not run.stopped_early:
            run.train_time_ms, run.train_line = _ms(tt.group(1), tt.group(2)), i
        sa = RE_STEP_AVG.search(m.string)
        if sa:
            run.step_avg_ms = float(sa.group(1))
        self.last_step_line = i
        return True

    def _total(self, m: re.Match, i: int) -> bool:
        """``Total submission size ...: N bytes`` (model + code). Returns True."""
        self.run.artifact_bytes, self.run.artifact_line = _bytes(m.group(1)), i
        self.after_total = True
        return True

    def _model(self, m: re.Match, i: int) -> bool:
        """``Serialized model ...: N bytes`` (the last one is the compressed model). Returns True."""
        self.run.model_bytes = _bytes(m.group(1))
        return True

    def _code_size(self, m: re.Match, i: int) -> bool:
        """``Code size[ (note)]: N bytes``; the code_sha256 line's count wins over it. Returns True."""
        run = self.run
        note, value = (m.group(1) or "").lower(), _bytes(m.group(2))
        if "compress" in note and "uncompress" not in note:
            run.code_compressed = value
            if run.code_bytes is None:
                run.code_line = i
        elif run.code_sha256 is None or run.code_bytes is None:
            run.code_bytes, run.code_line = value, i
        return True

    def _eval_total(self, m: re.Match, i: int) -> bool:
        """``eval_time_total:<ms>ms`` or ``total_eval_time:<s>s``. Returns True."""
        self.run.eval_total_ms, self.run.eval_total_line = _ms(m.group(1), m.group(2)), i
        return True

    def _seed(self, m: re.Match, i: int) -> bool:
        """``seed:<n>``: the first one is the run's seed. Returns True for that one."""
        if self.run.seed is not None:
            return False
        self.run.seed = int(m.group(1))
        return True

    def _score(self, line: str, i: int) -> bool:
        """Returns True for a score line (``<metric> val_loss:X val_bpb:Y``, ``_exact`` or not), read with its eval
        time unless it is a diagnostic."""
        m = RE_EXACT.search(line)
        exact = m is not None
        m = m or RE_SCORE.match(line)
        if m is None or m.group(1).lower().startswith("step"):
            return False
        score = Score(m.group(1).strip(), float(m.group(2)), float(m.group(3)), i, exact)
        self.run.scores.append(score)
        t = RE_EVAL_TIME.search(line)
        if t and not RE_DIAG.search(score.metric):
            self.run.eval_phases.append((score.metric, float(t.group(1)), i))
        return True

    def _other_eval(self, line: str, i: int) -> None:
        """An ``eval_time:Nms`` on another line after the artifact is written: an eval phase named by its first word."""
        m = RE_OTHER_EVAL.match(line)
        if m and not RE_DIAG.search(m.group(1) or ""):
            self.run.eval_phases.append((m.group(1) or "eval", float(m.group(2)), i))


def _pick_final(scores: list[Score], last_step_line: int) -> Score | None:
    """Returns the run's score: the last ``*_exact`` line that is not a ``final_float`` diagnostic (CONTRACT.md;
    upstream's ``legal_ttt_exact`` too); without exact lines, the last score line after training that is not a
    pre-quantisation or diagnostic one (marked inexact); None without score lines."""
    exact = [s for s in scores if s.exact]
    if exact:
        return ([s for s in exact if not s.metric.startswith(FLOAT_PREFIX)] or exact)[-1]
    cand = [s for s in scores if "pre" not in s.metric.lower() and not RE_DIAG.search(s.metric)] or scores
    post = [s for s in cand if s.line > last_step_line] or cand
    return post[-1] if post else None


def _pick_pre_quant(scores: list[Score]) -> Score | None:
    """Returns the last pre-quantisation score (``final_float_*_exact``, else a "pre...quant" line), or None."""
    floats = [s for s in scores if s.exact and s.metric.startswith(FLOAT_PREFIX)]
    if floats:
        return floats[-1]
    pre = [s for s in scores if not s.exact and "pre" in s.metric.lower() and "quant" in s.metric.lower()]
    return pre[-1] if pre else None


def _fallback_seed(run: RunLog) -> int | None:
    """Returns the seed from a ``seed`` setting, the config's SEED, a SEED=... token or ``seed<N>`` in the text
    log's file name, in that order; None if none says."""
    for value in (run.attrs.get("seed"), (run.config or {}).get("SEED"), run.env.get("SEED")):
        if _i(value) is not None:
            return _i(value)
    m = RE_SEED_NAME.search(run.text_path.name) if run.text_path is not None else None
    return int(m.group(1)) if m else None


def _script_end(lines: list[str]) -> int:
    """Returns how many leading lines are the script itself (upstream logs start with it, then a ===== rule)."""
    if not RE_SCRIPT_HEAD.search("\n".join(lines[:5])):
        return 0
    for i, ln in enumerate(lines[: len(lines) * 3 // 4]):
        if ln.startswith("=" * 50):
            return i + 1
    return 0


def parse_text_log(text: str, path: Path | str | None = None, display: str | None = None) -> RunLog:
    """Returns the RunLog that ``text`` (a whole text log, read from ``path`` when given) describes. Never raises:
    a line that cannot be read is skipped and noted in ``problems``."""
    run = RunLog(text_path=Path(path) if path is not None else None, display=display, lines=text.splitlines())
    reader = _Reader(run)
    start = _script_end(run.lines)
    for i, raw in enumerate(run.lines[start:], start + 1):
        try:
            reader.feed(i, raw)
        except Exception as exc:  # noqa: BLE001 - a parser must never crash on odd lines
            run.problems.append(f"unreadable line {i} {raw.strip()[:60]!r}: {exc}")
    reader.finish()
    return run


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """Returns (text, None), or (None, why) when the file cannot be read. Undecodable bytes are replaced."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    return data.decode("utf-8", errors="replace"), None


def load_text_log(path: Path | str, display: str | None = None) -> RunLog:
    """Returns the RunLog of the text log at ``path`` (an unreadable file gives an empty one with a problem)."""
    text, err = _read_text(Path(path))
    if err:
        return RunLog(text_path=Path(path), display=display, problems=[err])
    return parse_text_log(text, path, display)


# --------------------------------------------------------------------------------------------------------------
# JSON run files (logs/<RUN_ID>.json)

# JSON key -> RunLog field, converter (a converter's None leaves the field as the text log had it)
_JSON_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("run_id", "run_id", _str), ("seed", "seed", _i), ("code_sha256", "code_sha256", _hex),
    ("code_bytes", "code_bytes", _i), ("model_bytes", "model_bytes", _i), ("artifact_bytes", "artifact_bytes", _i),
    ("world_size", "world_size", _i), ("device", "device", _str), ("gpu_name", "gpu_name", _gpu),
    ("num_params", "num_params", _i), ("steps", "steps", _i), ("iterations", "iterations", _i),
    ("train_time_ms", "train_time_ms", _num), ("step_avg_ms", "step_avg_ms", _num),
    ("eval_time_ms", "eval_total_ms", _num), ("attention_kernel", "attention", _str),
    ("compile_mode", "compile_mode", _str), ("stopped_early", "stopped_early", _bool),
    ("over_budget", "over_budget", _bool), ("versions", "versions", _str_dict),
)
# Must agree exactly with the text; timings and names are printed rounded or reformatted there.
_IDENTITY = {"run_id", "seed", "code_sha256", "code_bytes", "model_bytes", "artifact_bytes", "world_size", "device"}
# Times the text prints rounded to whole ms: more than 1 ms apart is a disagreement.
_TIMES = {"train_time_ms", "eval_total_ms"}
# What the limits are checked on: where text and JSON disagree (beyond rounding), the larger value counts (a JSON
# edited after the run cannot hide an overrun that its text log shows).
_LIMITS = {"train_time_ms", "eval_total_ms", "artifact_bytes", "model_bytes", "code_bytes"}


def parse_run_json(obj: Any, run: RunLog) -> None:
    """Overlay a JSON run file onto ``run`` in place: the JSON wins where it speaks. An identity field, time or score
    that disagrees with the text log is noted in ``run.conflicts``, and of two such values checked against a limit
    the larger counts."""
    if not isinstance(obj, dict):
        run.problems.append("run JSON is not an object")
        return
    run.status = _str(obj.get("status"))
    run.kit_json = "run_id" in obj and ("final" in obj or "scores" in obj)
    for key, attr, conv in _JSON_FIELDS:
        value = conv(obj.get(key))
        if value is None:
            continue
        old = getattr(run, attr)
        if old is not None and ((attr in _IDENTITY and old != value) or (attr in _TIMES and abs(old - value) > 1)):
            run.conflicts.append(f"{attr}: text log says {old!r}, JSON says {value!r}")
            value = max(old, value) if attr in _LIMITS else value
        setattr(run, attr, value)
    _json_config(obj.get("config"), run)
    _json_final(obj.get("final"), run)
    _json_pre_quant(obj.get("scores"), run)
    if run.seed is None and isinstance(run.config, dict):
        run.seed = _i(run.config.get("SEED"))


def _json_config(cfg: Any, run: RunLog) -> None:
    """Take the JSON's config (a text config that differs is a conflict); the text's settings keep precedence."""
    if not isinstance(cfg, dict):
        return
    if run.config is not None and run.config != cfg:
        run.conflicts.append("config: text log and JSON differ")
    run.config = cfg
    run.env = {**{str(k): _env_value(v) for k, v in cfg.items()}, **run.env}


def _json_final(final: Any, run: RunLog) -> None:
    """Take the JSON's final score (without a val_bpb: only when the text has none, and not exact); one that
    differs from the text's exact final line is a conflict."""
    if not isinstance(final, dict):
        return
    loss, bpb = _num(final.get("val_loss")), _num(final.get("val_bpb"))
    line_text = _str(final.get("line")) or ""
    m = RE_EXACT.search(line_text) or RE_EXACT_NAME.match(line_text)
    name = m.group(1) if m else _str(final.get("metric")) or "final"
    old = run.final
    if old is not None and old.exact and not (_close(old.val_loss, loss) and _close(old.val_bpb, bpb)):
        run.conflicts.append(f"final score: text log says {old.val_loss}/{old.val_bpb}, JSON says {loss}/{bpb}")
    if loss is None or (bpb is None and old is not None):
        return
    line = old.line if old is not None and old.metric == name else 0
    run.final = Score(name, loss, math.nan if bpb is None else bpb, line, exact=bpb is not None)


def _json_pre_quant(scores: Any, run: RunLog) -> None:
    """Take the JSON's float (pre-quantisation) score as ``pre_quant``."""
    s = scores.get("float_sliding_window") if isinstance(scores, dict) else None
    if isinstance(s, dict) and _num(s.get("val_loss")) is not None and _num(s.get("val_bpb")) is not None:
        run.pre_quant = Score("final_float_sliding_window_exact", _num(s["val_loss"]), _num(s["val_bpb"]))


def _json_evidence(obj: Any, run: RunLog) -> None:
    """For a run known from its JSON alone: an excerpt as evidence, and the eval phases on the artifact."""
    run.lines = [json.dumps(obj)[:300]]
    phases = obj.get("eval_phases_ms") if isinstance(obj, dict) else None
    if isinstance(phases, dict):
        run.eval_phases = [(str(k), float(v), 0) for k, v in phases.items()
                           if _num(v) is not None and math.isfinite(v) and not str(k).startswith("float")]


def overlay_json_file(run: RunLog, json_path: Path) -> RunLog:
    """Returns ``run`` with the JSON run file at ``json_path`` read into it (an unreadable one is a problem)."""
    run.json_path = json_path
    try:
        obj = json.loads(Path(json_path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError) as exc:
        run.problems.append(f"cannot read run JSON {json_path.name}: {exc}")
        run.status = None
        return run
    parse_run_json(obj, run)
    if run.text_path is None:
        _json_evidence(obj, run)
    return run


# --------------------------------------------------------------------------------------------------------------
# Entry points


def sibling_paths(path: Path) -> tuple[Path | None, Path | None]:
    """Returns (text, json) paths of a run given logs/<id>.txt, .log, .out or .json; None where there is none."""
    path = Path(path)
    if path.suffix == ".json":
        text = next((c for c in (path.with_suffix(s) for s in TEXT_SUFFIXES) if c.exists()), None)
        return text, path
    cand = path.with_suffix(".json")
    return path, (cand if cand.exists() else None)


def load_run(path: Path | str, display: str | None = None) -> RunLog:
    """Returns the run read from its text log and/or JSON sibling, either path given. Never raises."""
    text_path, json_path = sibling_paths(Path(path))
    run = load_text_log(text_path, display) if text_path is not None else RunLog(display=display)
    return overlay_json_file(run, json_path) if json_path is not None else run


def _candidate_files(folder: Path) -> list[Path]:
    """Returns the files of ``folder`` and ``folder/logs`` that may hold a run, each folder's sorted by name."""
    out: list[Path] = []
    for d in (folder, folder / "logs"):
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.is_file())
    return [p for p in out if p.name not in NOT_LOGS and not p.name.lower().startswith("readme")]


def find_runs(folder: Path) -> list[RunLog]:
    """Returns the runs logged in ``folder`` and ``folder/logs``, in file-name order: one per text log (``.log``,
    ``.txt``, ``.out`` up to 64 MiB, its JSON sibling read into it) and one per kit JSON run file without a text
    log; files that hold nothing a training run writes are left out."""
    files = _candidate_files(folder)
    texts = [p for p in files if p.suffix in TEXT_SUFFIXES and p.stat().st_size <= MAX_TEXT_BYTES]
    stems = {p.with_suffix("") for p in texts}
    runs = []
    for p in files:
        display = str(p.relative_to(folder))
        if p in texts:
            runs.append(load_run(p, display))
        elif p.suffix == ".json" and p.with_suffix("") not in stems:
            runs.append(overlay_json_file(RunLog(display=display), p))
    return [r for r in runs if r.recognised]
