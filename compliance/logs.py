"""Logs and submission.json: limits (train time, eval time, artifact bytes, code bytes), scores, seeds, the
configuration each run recorded, and the record-significance test.

Reads upstream-style text logs (``step:S/N train_loss:X train_time:Tms step_avg:Ams`` and the newer
``S/N train_loss: X train_time: 9.8m``, ``stopping_early: wallclock_cap ...``, ``Total submission size ...: N bytes``,
``Code size[ (..)]: N bytes``, ``final_..._exact val_loss:X val_bpb:Y``, ``legal_ttt_exact ...``, ``... eval_time:Nms``,
``total_eval_time:Ns``, hyperparameter dumps, ``NAME=value``), the kit's own logs (``config:{json}``,
``code_sha256:.. code_bytes:..``, ``eval_time_total:Nms``) and the kit's JSON summaries.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .flags import parse_value
from .report import ACTIVE, Finding
from .rulings import RULINGS

TRAIN_CAP_MS = 600_000.0
EVAL_CAP_MS = 600_000.0
ARTIFACT_CAP = 16_000_000
SIGNIFICANCE_NATS = 0.005
SIGNIFICANCE_P = 0.01

_NUM = r"(-?[\d.]+(?:[eE][-+]?\d+)?|nan|inf)"
RE_TRAIN_STEP = re.compile(r"^(?:step[:\s]*)?(\d+)/(\d+)\s+train_loss[:=]\s*" + _NUM +
                           r".*?train_time[:=]\s*([\d.]+)\s*(ms|s|m|min)\b(?:.*?step_avg[:=]\s*([\d.]+)\s*ms)?")
RE_VAL_STEP = re.compile(r"^(?:step[:\s]*)?(\d+)/(\d+)\s+val_loss[:=]\s*" + _NUM + r"\s+val_bpb[:=]\s*" + _NUM +
                         r"(?:.*?train_time[:=]\s*([\d.]+)\s*(ms|s|m|min)\b)?(?:.*?step_avg[:=]\s*([\d.]+)\s*ms)?")
RE_STOP = re.compile(r"stopping_early:\s*\w+\s+train_time[:=]\s*([\d.]+)\s*(ms|s)\s+step[:=]\s*(\d+)/(\d+)")
RE_TOTAL = re.compile(r"^Total submission size[^:]*:\s*([\d,]+)\s*bytes", re.I)
RE_MODEL = re.compile(r"^Serialized model([^:]*):\s*([\d,]+)\s*bytes", re.I)
RE_CODE = re.compile(r"^Code size(?:\s*\(([^)]*)\))?\s*:\s*([\d,]+)\s*bytes", re.I)
RE_KIT_CODE = re.compile(r"^code_sha256:([0-9a-f]{64})\s+code_bytes:(\d+)")
RE_SCORE = re.compile(r"^([A-Za-z][\w\-]*?)[:\s]+val_loss[:=]\s*" + _NUM + r"\s+val_bpb[:=]\s*" + _NUM)
RE_EVAL_TIME = re.compile(r"\b(?:eval_time|time)[:=]\s*([\d.]+)\s*ms\b")
RE_EVAL_TOTAL_MS = re.compile(r"^eval_time_total[:=]\s*([\d.]+)\s*ms")
RE_EVAL_TOTAL_S = re.compile(r"^total_eval_time[:=]\s*([\d.]+)\s*s")
RE_SEED = re.compile(r"^seed[:=]\s*(\d+)\s*$", re.I)
RE_CONFIG = re.compile(r"^config:\s*(\{.*\})\s*$")
RE_ENV_TOKEN = re.compile(r"(?<![\w.])([A-Z][A-Z0-9_]{2,})=([^\s,;'\"]+)")
RE_ATTR_TOKEN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]{2,})[:=]\s*(True|False|None|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\b")
RE_DUMP_LINE = re.compile(r"^\s+([A-Za-z_][\w]*)\s*[:=]\s*(.*?)\s*$")
_DIAG = re.compile(r"diagnostic|pre_?quant|float|post_ema|post_ttt_diag|^step", re.I)
_CODE_LINE = re.compile(r"^\s*(def |class |import |from |return |if |elif |else:|for |while |with |try:|except|#|@|\)|\])"
                        r"|os\.environ|getenv| = |\+= |\bself\.")


@dataclass
class RunLog:
    path: Path
    name: str
    kind: str = "text"
    seed: int | None = None
    train_time_ms: float | None = None
    train_line: int = 0
    step_avg_ms: float | None = None
    steps: int | None = None
    stopped_early: bool = False
    eval_phases: list = field(default_factory=list)      # (label, ms, line)
    eval_total_ms: float | None = None
    eval_total_line: int = 0
    artifact_bytes: int | None = None
    artifact_line: int = 0
    model_bytes: int | None = None
    code_bytes: int | None = None
    code_line: int = 0
    code_compressed: int | None = None
    code_sha256: str | None = None
    scores: list = field(default_factory=list)           # (metric, loss, bpb, line)
    final: tuple | None = None                           # (metric, loss, bpb, line)
    env: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)

    def line(self, n: int) -> str:
        return self.lines[n - 1].strip() if 0 < n <= len(self.lines) else ""


def _ms(value: str, unit: str) -> float:
    v = float(value)
    return v if unit == "ms" else v * 1000 if unit == "s" else v * 60000


def parse_text_log(path: Path, display: str) -> RunLog | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = text.splitlines()
    log = RunLog(path, display, lines=lines)
    recognised = 0
    # an upstream log starts with the script itself, then a ===== separator: skip that part for settings
    code_end = 0
    head = "\n".join(lines[:5])
    if re.search(r"^\s*(import|from|\"\"\"|#!)", head, re.M):
        for i, ln in enumerate(lines[: len(lines) * 3 // 4]):
            if ln.startswith("=" * 50):
                code_end = i + 1
                break
    in_dump = False
    after_training = False
    last_step_line = 0
    for i, raw in enumerate(lines, 1):
        ln = raw.strip()
        if not ln:
            in_dump = False
            continue
        if i <= code_end:
            continue
        m = RE_CONFIG.match(ln)
        if m:
            try:
                cfg = json.loads(m.group(1))
                if isinstance(cfg, dict):
                    for k, v in cfg.items():
                        log.env[str(k)] = "1" if v is True else "0" if v is False else str(v)
                recognised += 1
            except ValueError:
                pass
            continue
        if re.match(r"^(hyperparameters|hparams|config|args|settings)\s*:?\s*$", ln, re.I):
            in_dump = True
            continue
        if in_dump:
            m = RE_DUMP_LINE.match(raw)
            if m:
                log.attrs[m.group(1)] = parse_value(m.group(2))
                continue
            in_dump = False
        m = RE_TRAIN_STEP.match(ln)
        if m:
            recognised += 1
            log.steps = int(m.group(1))
            log.train_time_ms = _ms(m.group(4), m.group(5))
            log.train_line = i
            if m.group(6):
                log.step_avg_ms = float(m.group(6))
            last_step_line = i
            continue
        m = RE_VAL_STEP.match(ln)
        if m:
            recognised += 1
            log.steps = int(m.group(1))
            if m.group(5):
                log.train_time_ms = _ms(m.group(5), m.group(6))
                log.train_line = i
            if m.group(7):
                log.step_avg_ms = float(m.group(7))
            last_step_line = i
            continue
        m = RE_STOP.search(ln)
        if m:
            recognised += 1
            log.stopped_early = True
            log.train_time_ms = _ms(m.group(1), m.group(2))
            log.train_line = i
            log.steps = int(m.group(3))
            after_training = True
            continue
        m = RE_TOTAL.match(ln)
        if m:
            recognised += 1
            log.artifact_bytes = int(m.group(1).replace(",", ""))
            log.artifact_line = i
            after_training = True
            continue
        m = RE_MODEL.match(ln)
        if m:
            log.model_bytes = int(m.group(2).replace(",", ""))
            continue
        m = RE_CODE.match(ln)
        if m:
            note = (m.group(1) or "").lower()
            value = int(m.group(2).replace(",", ""))
            if "compress" in note and "uncompress" not in note:
                log.code_compressed = value
                if log.code_bytes is None:
                    log.code_line = i
            else:
                log.code_bytes = value
                log.code_line = i
            continue
        m = RE_KIT_CODE.match(ln)
        if m:
            log.code_sha256 = m.group(1)
            log.code_bytes = int(m.group(2))
            log.code_line = i
            continue
        m = RE_EVAL_TOTAL_MS.match(ln)
        if m:
            log.eval_total_ms = float(m.group(1))
            log.eval_total_line = i
            continue
        m = RE_EVAL_TOTAL_S.match(ln)
        if m:
            log.eval_total_ms = float(m.group(1)) * 1000
            log.eval_total_line = i
            continue
        m = RE_SEED.match(ln)
        if m and log.seed is None:
            log.seed = int(m.group(1))
            continue
        m = RE_SCORE.match(ln)
        if m:
            recognised += 1
            metric = m.group(1)
            try:
                loss, bpb = float(m.group(2)), float(m.group(3))
            except ValueError:
                continue
            log.scores.append((metric, loss, bpb, i))
            if metric.endswith("_exact"):
                log.final = (metric, loss, bpb, i)
            t = RE_EVAL_TIME.search(ln)
            if t and (after_training or i > last_step_line) and not _DIAG.search(metric):
                log.eval_phases.append((metric, float(t.group(1)), i))
        if not _CODE_LINE.search(raw):
            for k, v in RE_ENV_TOKEN.findall(ln):
                log.env.setdefault(k, v)
            for k, v in RE_ATTR_TOKEN.findall(ln):
                log.attrs.setdefault(k, parse_value(v))
    if log.final is None and log.scores:
        post = [s for s in log.scores if s[3] > last_step_line] or log.scores
        log.final = post[-1]
    if log.seed is None:
        for key in ("seed", "SEED"):
            v = log.attrs.get(key) if key == "seed" else log.env.get(key)
            if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
                log.seed = int(v)
                break
    if log.seed is None:
        m = re.search(r"seed[_\-]?(\d+)", path.stem, re.I)
        if m:
            log.seed = int(m.group(1))
    if recognised == 0:
        return None
    return log


def parse_kit_json(path: Path, display: str) -> RunLog | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or "run_id" not in obj or not ("final" in obj or "scores" in obj):
        return None
    log = RunLog(path, display, kind="kit-json")
    log.seed = obj.get("seed") if isinstance(obj.get("seed"), int) else None
    log.train_time_ms = _num(obj.get("train_time_ms"))
    log.step_avg_ms = _num(obj.get("step_avg_ms"))
    log.steps = obj.get("steps") if isinstance(obj.get("steps"), int) else None
    log.stopped_early = bool(obj.get("stopped_early"))
    log.eval_total_ms = _num(obj.get("eval_time_ms"))
    phases = obj.get("eval_phases_ms") or {}
    if isinstance(phases, dict):
        log.eval_phases = [(k, float(v), 0) for k, v in phases.items() if _num(v) is not None
                           and not str(k).startswith("float")]
    log.artifact_bytes = obj.get("artifact_bytes") if isinstance(obj.get("artifact_bytes"), int) else None
    log.model_bytes = obj.get("model_bytes") if isinstance(obj.get("model_bytes"), int) else None
    log.code_bytes = obj.get("code_bytes") if isinstance(obj.get("code_bytes"), int) else None
    log.code_sha256 = obj.get("code_sha256")
    fin = obj.get("final") or {}
    if isinstance(fin, dict) and _num(fin.get("val_loss")) is not None:
        log.final = (fin.get("line") or fin.get("metric") or "final", float(fin["val_loss"]),
                     float(fin.get("val_bpb", float("nan"))), 0)
    cfg = obj.get("config") or {}
    if isinstance(cfg, dict):
        log.env = {str(k): ("1" if v is True else "0" if v is False else str(v)) for k, v in cfg.items()}
    log.lines = [json.dumps(obj)[:300]]
    return log


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def find_logs(folder: Path) -> list[RunLog]:
    out = []
    cands = []
    for d in (folder, folder / "logs"):
        if d.is_dir():
            cands += sorted(p for p in d.iterdir() if p.is_file())
    for p in cands:
        display = str(p.relative_to(folder))
        if p.name in ("submission.json", "requirements.txt") or p.name.lower().startswith("readme"):
            continue
        if p.suffix in (".log", ".txt", ".out"):
            if p.stat().st_size > 64 * 1024 * 1024:
                continue
            lg = parse_text_log(p, display)
            if lg is not None:
                out.append(lg)
        elif p.suffix == ".json":
            lg = parse_kit_json(p, display)
            if lg is not None:
                out.append(lg)
    # a kit run leaves NAME.txt and NAME.json: keep the text (line numbers) but take the JSON's numbers as well
    by_stem = {}
    for lg in out:
        by_stem.setdefault(lg.path.with_suffix("").as_posix(), []).append(lg)
    merged = []
    for _, group in by_stem.items():
        texts = [g for g in group if g.kind == "text"]
        jsons = [g for g in group if g.kind == "kit-json"]
        if texts and jsons:
            t, j = texts[0], jsons[0]
            for attr in ("seed", "train_time_ms", "artifact_bytes", "code_bytes", "model_bytes", "eval_total_ms"):
                if getattr(t, attr) is None:
                    setattr(t, attr, getattr(j, attr))
            t.env = {**j.env, **t.env}
            merged.append(t)
        else:
            merged.extend(group)
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------------
def _finding(log: RunLog, line: int, expl: str) -> Finding:
    ev = f"{line}: {log.line(line)}" if line else (log.lines[0][:200] if log.lines else "")
    return Finding("LIMITS", ACTIVE, log.name, line, ev, expl, RULINGS["LIMITS"])


def check_logs(logs: list[RunLog], script_bytes: int | None, script_name: str, submission: dict | None,
               submission_name: str, limits: dict, warnings: list[str], non_record: bool = False) -> list[Finding]:
    """non_record: the non-record track allows longer runs; time overruns become warnings there."""
    out: list[Finding] = []
    runs = {}
    timed = []
    for lg in logs:
        r = {"seed": lg.seed}
        # training time
        if lg.train_time_ms is not None:
            r["train_time_ms"] = round(lg.train_time_ms, 1)
            slack = max(2 * (lg.step_avg_ms or 0.0), 1000.0)
            if lg.train_time_ms > TRAIN_CAP_MS + slack:
                timed.append(_finding(lg, lg.train_line,
                                      f"Training took {lg.train_time_ms / 1000:.1f} s, over the 600 s cap."))
            elif lg.train_time_ms > TRAIN_CAP_MS:
                warnings.append(f"{lg.name}: training stopped at {lg.train_time_ms / 1000:.3f} s, past 600 s by "
                                "less than two steps / 1 s (the cap is checked after each step)")
        # evaluation time
        phase_sum = sum(ms for _, ms, _ in lg.eval_phases)
        total = lg.eval_total_ms if lg.eval_total_ms is not None else (phase_sum if lg.eval_phases else None)
        if total is not None:
            r["eval_time_ms"] = round(total, 1)
            if lg.eval_phases:
                r["eval_phases_ms"] = {lab: ms for lab, ms, _ in lg.eval_phases}
            if total > EVAL_CAP_MS:
                line = lg.eval_total_line or (lg.eval_phases[-1][2] if lg.eval_phases else 0)
                timed.append(_finding(lg, line, f"Evaluation took {total / 1000:.1f} s in all (phases: "
                                              f"{', '.join(f'{l} {ms / 1000:.1f}s' for l, ms, _ in lg.eval_phases)}), "
                                              "over the 600 s cap."))
        # artifact bytes (the logged total; recomputed below with the submitted code's bytes)
        if lg.artifact_bytes is not None:
            r["artifact_bytes"] = lg.artifact_bytes
            real_total = None
            if script_bytes is not None and lg.model_bytes is not None and lg.model_bytes < lg.artifact_bytes:
                real_total = lg.model_bytes + script_bytes
            if lg.artifact_bytes > ARTIFACT_CAP and (real_total is None or real_total > ARTIFACT_CAP):
                out.append(_finding(lg, lg.artifact_line,
                                    f"The artifact is {lg.artifact_bytes:,} bytes, over the 16,000,000-byte cap."))
            elif lg.artifact_bytes > ARTIFACT_CAP:
                warnings.append(f"{lg.name}: logged total {lg.artifact_bytes:,} bytes is over the cap, but with the "
                                f"submitted code ({script_bytes:,} bytes) it is {real_total:,} bytes")
        # code bytes against the submitted file
        if lg.code_bytes is not None:
            r["code_bytes_logged"] = lg.code_bytes
        logged = lg.code_bytes if lg.code_bytes is not None else lg.code_compressed
        counted = logged
        if lg.artifact_bytes is not None and lg.model_bytes is not None and lg.artifact_bytes > lg.model_bytes:
            counted = lg.artifact_bytes - lg.model_bytes
        if script_bytes is not None and counted is not None and counted != script_bytes:
            model = lg.model_bytes if lg.model_bytes is not None else (
                lg.artifact_bytes - counted if lg.artifact_bytes is not None else None)
            real = model + script_bytes if model is not None else None
            what = ("compressed code size" if lg.code_compressed is not None and counted == lg.code_compressed
                    else "code size")
            compressed_convention = lg.code_compressed is not None and counted == lg.code_compressed
            if real is not None and real > ARTIFACT_CAP and not (lg.artifact_bytes or 0) > ARTIFACT_CAP \
                    and not compressed_convention:
                out.append(_finding(lg, lg.artifact_line or lg.code_line,
                                    f"The logged total counts a {what} of {counted:,} bytes, but the submitted "
                                    f"{script_name} is {script_bytes:,} bytes: with it the artifact is "
                                    f"{real:,} bytes, over the 16,000,000-byte cap."))
            else:
                over = real is not None and real > ARTIFACT_CAP
                warnings.append(f"{lg.name}: logged {what} {counted:,} bytes differs from the submitted "
                                f"{script_name} ({script_bytes:,} bytes)"
                                + (f"; with the file as submitted the total is {real:,} bytes"
                                   + (" (OVER the 16,000,000-byte cap unless the code ships compressed)" if over else "")
                                   if real is not None else ""))
        if lg.final is not None:
            r["final"] = {"metric": lg.final[0], "val_loss": lg.final[1], "val_bpb": lg.final[2]}
        runs[lg.name] = r
    if non_record:
        for fd in timed:
            warnings.append(f"{fd.file}:{fd.line}: {fd.explanation} (non-record track: longer runs are allowed)")
    else:
        out.extend(timed)
    if runs:
        limits["runs"] = runs
        limits["caps"] = {"train_time_ms": TRAIN_CAP_MS, "eval_time_ms": EVAL_CAP_MS, "artifact_bytes": ARTIFACT_CAP}
    if script_bytes is not None:
        limits["code_bytes"] = {"file": script_name, "bytes": script_bytes}
    if submission is not None:
        out.extend(_check_submission(submission, submission_name, logs, script_bytes, script_name, limits, warnings,
                                     non_record))
    return out


def _check_submission(sub: dict, name: str, logs: list[RunLog], script_bytes, script_name, limits, warnings,
                      non_record: bool = False):
    out = []
    text_lines = []
    try:
        text_lines = Path(sub.get("__path__", "")).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        pass

    def line_of(key: str) -> int:
        for i, ln in enumerate(text_lines, 1):
            if f'"{key}"' in ln:
                return i
        return 0

    def sub_finding(key, expl):
        ln = line_of(key)
        ev = f"{ln}: {text_lines[ln - 1].strip()}" if ln else f'"{key}": {sub.get(key)!r}'
        return Finding("LIMITS", ACTIVE, name, ln, ev, expl, RULINGS["LIMITS"])

    missing = [k for k in ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total",
                           "bytes_code") if k not in sub]
    if missing:
        warnings.append(f"{name}: missing keys {', '.join(missing)}")
    bt = sub.get("bytes_total")
    if isinstance(bt, (int, float)) and bt > ARTIFACT_CAP:
        out.append(sub_finding("bytes_total", f"bytes_total is {int(bt):,}, over the 16,000,000-byte cap."))
    bc = sub.get("bytes_code")
    if isinstance(bc, (int, float)) and script_bytes is not None and int(bc) != script_bytes:
        warnings.append(f"{name}: bytes_code {int(bc):,} differs from the submitted {script_name} "
                        f"({script_bytes:,} bytes)")
    et = sub.get("eval_time_seconds")
    if isinstance(et, (int, float)) and et > 600:
        if non_record:
            warnings.append(f"{name}: eval_time_seconds is {et}, over 600 s (non-record track)")
        else:
            out.append(sub_finding("eval_time_seconds", f"eval_time_seconds is {et}, over the 600 s cap."))
    arts = [lg.artifact_bytes for lg in logs if lg.artifact_bytes is not None]
    if isinstance(bt, (int, float)) and arts and int(bt) < max(arts):
        warnings.append(f"{name}: bytes_total {int(bt):,} is below the largest logged artifact ({max(arts):,} bytes)")
    finals = [lg for lg in logs if lg.final is not None]
    for key, idx in (("val_loss", 1), ("val_bpb", 2)):
        v = sub.get(key)
        if isinstance(v, (int, float)) and finals:
            vals = [lg.final[idx] for lg in finals if math.isfinite(lg.final[idx])]
            if not vals:
                continue
            mean = sum(vals) / len(vals)
            if abs(v - mean) > 5e-4 and not any(abs(v - x) <= 5e-4 for x in vals):
                warnings.append(f"{name}: {key} {v} does not match the logs (mean over {len(vals)} run(s): "
                                f"{mean:.8f})")
    seeds_claimed = sub.get("seeds")
    log_seeds = {lg.seed for lg in logs if lg.seed is not None}
    if isinstance(seeds_claimed, list):
        miss = [s for s in seeds_claimed if isinstance(s, int) and s not in log_seeds]
        if miss and logs:
            warnings.append(f"{name}: no log found for seed(s) {', '.join(map(str, miss))}")
    sr = sub.get("seed_results")
    if isinstance(sr, dict):
        for seed, res in sr.items():
            if not isinstance(res, dict):
                continue
            lg = next((x for x in finals if str(x.seed) == str(seed)), None)
            if lg is None:
                continue
            for key, idx in (("val_loss", 1), ("val_bpb", 2)):
                v = res.get(key)
                if isinstance(v, (int, float)) and abs(v - lg.final[idx]) > 5e-4:
                    warnings.append(f"{name}: seed {seed} {key} {v} differs from {lg.name} ({lg.final[idx]:.8f})")
            ab = res.get("artifact_bytes")
            if isinstance(ab, (int, float)) and ab > ARTIFACT_CAP:
                out.append(sub_finding("artifact_bytes", f"seed {seed} artifact_bytes {int(ab):,} is over the "
                                                         "16,000,000-byte cap."))
    track = str(sub.get("track", ""))
    n_seeds = len(log_seeds) or (len(seeds_claimed) if isinstance(seeds_claimed, list) else 0)
    if "10min" in track and n_seeds and n_seeds < 3:
        warnings.append(f"{name}: record track with {n_seeds} seed(s); records usually show 3")
    limits["submission"] = {k: sub.get(k) for k in ("val_loss", "val_bpb", "bytes_total", "bytes_code", "seeds")
                            if k in sub}
    return out


def per_seed_losses(logs: list[RunLog], submission: dict | None) -> tuple[list[float], list[float]]:
    losses, bpbs = [], []
    seen = set()
    for lg in logs:
        if lg.final is None or not math.isfinite(lg.final[1]):
            continue
        key = lg.seed if lg.seed is not None else lg.name
        if key in seen:
            continue
        seen.add(key)
        losses.append(lg.final[1])
        bpbs.append(lg.final[2])
    if not losses and isinstance(submission, dict) and isinstance(submission.get("seed_results"), dict):
        for res in submission["seed_results"].values():
            if isinstance(res, dict) and isinstance(res.get("val_loss"), (int, float)):
                losses.append(float(res["val_loss"]))
                bpbs.append(float(res.get("val_bpb", float("nan"))))
    if not losses and isinstance(submission, dict) and isinstance(submission.get("val_loss"), (int, float)):
        losses.append(float(submission["val_loss"]))
        if isinstance(submission.get("val_bpb"), (int, float)):
            bpbs.append(float(submission["val_bpb"]))
    return losses, bpbs


def significance(losses: list[float], bpbs: list[float], reference_loss: float | None,
                 reference_bpb: float | None) -> tuple[dict, list[str]]:
    """One-sided Welch t-test (scipy): is the mean per-seed loss below reference_loss - 0.005 nats at p < 0.01?
    A reference bpb is converted to nats with the entry's own loss/bpb ratio."""
    warnings = []
    info: dict = {"seeds": len(losses), "threshold_nats": SIGNIFICANCE_NATS, "alpha": SIGNIFICANCE_P}
    if reference_loss is None and reference_bpb is not None:
        ratio = [l / b for l, b in zip(losses, bpbs) if b and math.isfinite(b) and b > 0]
        if not ratio:
            warnings.append("STATS: cannot convert the reference bpb to nats (no val_loss/val_bpb pair found)")
            return info, warnings
        r = sum(ratio) / len(ratio)
        reference_loss = reference_bpb * r
        info["reference_bpb"] = reference_bpb
        info["nats_per_bpb"] = r
    if reference_loss is None:
        return info, warnings
    info["reference_loss"] = reference_loss
    target = reference_loss - SIGNIFICANCE_NATS
    info["target_loss"] = target
    if not losses:
        warnings.append("STATS: no per-seed val_loss found in the logs or submission.json")
        return info, warnings
    mean = sum(losses) / len(losses)
    info["mean_loss"] = mean
    info["improvement_nats"] = reference_loss - mean
    if len(losses) < 2:
        info["p_value"] = None
        warnings.append(f"STATS: one seed only (val_loss {mean:.6f}); the significance test needs >= 2 seeds")
        return info, warnings
    from scipy import stats
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1))
    if sd == 0.0:
        p = 0.0 if mean < target else 1.0
        t = float("-inf") if mean < target else float("inf")
    else:
        res = stats.ttest_1samp(losses, target, alternative="less")
        p, t = float(res.pvalue), float(res.statistic)
    info.update({"t_statistic": t, "p_value": p, "std_loss": sd, "significant": p < SIGNIFICANCE_P})
    if not p < SIGNIFICANCE_P:
        warnings.append(f"STATS: not a significant record: mean val_loss {mean:.6f} vs reference {reference_loss:.6f} "
                        f"- 0.005 = {target:.6f}; one-sided Welch t = {t:.3f}, p = {p:.4g} (needs p < 0.01, "
                        f"{len(losses)} seeds)")
    return info, warnings
