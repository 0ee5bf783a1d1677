"""LIMITS over the logs: what the run logs and submission.json say about the limits (train time, eval time,
artifact bytes, code bytes), and scores and seeds against submission.json. The logs are read by
``compliance/logparse.py`` (the parser the record tool shares)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

from ..logparse import RunLog
from ..report import ACTIVE, Finding
from ..rulings import RULINGS
from .base import LogContext, Rule
from .registry import register

TRAIN_CAP_MS = 600_000.0
EVAL_CAP_MS = 600_000.0
ARTIFACT_CAP = 16_000_000


def _finding(log: RunLog, line: int, expl: str) -> Finding:
    """Returns a LIMITS finding on ``log`` with line ``line`` (or the log's first line) as evidence."""
    ev = f"{line}: {log.line(line)}" if line else (log.lines[0][:200] if log.lines else "")
    return Finding("LIMITS", ACTIVE, log.name, line, ev, expl, RULINGS["LIMITS"])


def _train_time(lg: RunLog, r: dict, warnings: list[str]) -> list[Finding]:
    """Returns the finding for training past 600 s (by more than two steps / 1 s; less is a warning)."""
    if lg.train_time_ms is None:
        return []
    r["train_time_ms"] = round(lg.train_time_ms, 1)
    slack = max(2 * (lg.step_avg_ms or 0.0), 1000.0)
    if lg.train_time_ms > TRAIN_CAP_MS + slack:
        return [_finding(lg, lg.train_line, f"Training took {lg.train_time_ms / 1000:.1f} s, over the 600 s cap.")]
    if lg.train_time_ms > TRAIN_CAP_MS:
        warnings.append(f"{lg.name}: training stopped at {lg.train_time_ms / 1000:.3f} s, past 600 s by "
                        "less than two steps / 1 s (the cap is checked after each step)")
    return []


def _eval_time(lg: RunLog, r: dict) -> list[Finding]:
    """Returns the finding for evaluation over 600 s in all (the logged total, else the sum of the phases)."""
    total = lg.eval_time_ms
    if total is None:
        return []
    r["eval_time_ms"] = round(total, 1)
    if lg.eval_phases:
        r["eval_phases_ms"] = {lab: ms for lab, ms, _ in lg.eval_phases}
    if total <= EVAL_CAP_MS:
        return []
    line = lg.eval_total_line or (lg.eval_phases[-1][2] if lg.eval_phases else 0)
    phases = ", ".join(f"{lab} {ms / 1000:.1f}s" for lab, ms, _ in lg.eval_phases)
    return [_finding(lg, line, f"Evaluation took {total / 1000:.1f} s in all (phases: {phases}), over the 600 s cap.")]


def _artifact(lg: RunLog, r: dict, script_bytes: int | None, warnings: list[str]) -> list[Finding]:
    """Returns the finding for a logged artifact over 16,000,000 bytes (a warning when the submitted code's bytes
    bring it under)."""
    if lg.artifact_bytes is None:
        return []
    r["artifact_bytes"] = lg.artifact_bytes
    real_total = None
    if script_bytes is not None and lg.model_bytes is not None and lg.model_bytes < lg.artifact_bytes:
        real_total = lg.model_bytes + script_bytes
    if lg.artifact_bytes > ARTIFACT_CAP and (real_total is None or real_total > ARTIFACT_CAP):
        return [_finding(lg, lg.artifact_line,
                         f"The artifact is {lg.artifact_bytes:,} bytes, over the 16,000,000-byte cap.")]
    if lg.artifact_bytes > ARTIFACT_CAP:
        warnings.append(f"{lg.name}: logged total {lg.artifact_bytes:,} bytes is over the cap, but with the "
                        f"submitted code ({script_bytes:,} bytes) it is {real_total:,} bytes")
    return []


def _code_bytes(lg: RunLog, r: dict, script_bytes: int | None, script_name: str,
                warnings: list[str]) -> list[Finding]:
    """Returns the finding for a logged total that counts other code bytes than the submitted file's, when the
    file as submitted takes the artifact over the cap (a warning otherwise)."""
    if lg.code_bytes is not None:
        r["code_bytes_logged"] = lg.code_bytes
    counted = lg.code_bytes if lg.code_bytes is not None else lg.code_compressed
    if lg.artifact_bytes is not None and lg.model_bytes is not None and lg.artifact_bytes > lg.model_bytes:
        counted = lg.artifact_bytes - lg.model_bytes
    if script_bytes is None or counted is None or counted == script_bytes:
        return []
    model = lg.model_bytes if lg.model_bytes is not None else (
        lg.artifact_bytes - counted if lg.artifact_bytes is not None else None)
    real = model + script_bytes if model is not None else None
    compressed_convention = lg.code_compressed is not None and counted == lg.code_compressed
    what = "compressed code size" if compressed_convention else "code size"
    if real is not None and real > ARTIFACT_CAP and not (lg.artifact_bytes or 0) > ARTIFACT_CAP \
            and not compressed_convention:
        return [_finding(lg, lg.artifact_line or lg.code_line,
                         f"The logged total counts a {what} of {counted:,} bytes, but the submitted "
                         f"{script_name} is {script_bytes:,} bytes: with it the artifact is "
                         f"{real:,} bytes, over the 16,000,000-byte cap.")]
    over = real is not None and real > ARTIFACT_CAP
    warnings.append(f"{lg.name}: logged {what} {counted:,} bytes differs from the submitted "
                    f"{script_name} ({script_bytes:,} bytes)"
                    + (f"; with the file as submitted the total is {real:,} bytes"
                       + (" (OVER the 16,000,000-byte cap unless the code ships compressed)" if over else "")
                       if real is not None else ""))
    return []


RE_CALIB_TIME = re.compile(r"(?:hessians?|calibration)\b.*?\bin\s+(" + r"\d+(?:\.\d+)?" + r")\s*s\b", re.I)


def _calibration_time(lg: RunLog, r: dict, warnings: list[str]) -> None:
    """A warning when a log shows calibration time that does not fit in what the training left of the 600 s
    (the code's reserve is checked statically by CALIB-VAL; the log says how long calibration really took)."""
    if lg.train_time_ms is None:
        return
    for i, text in enumerate(lg.lines, 1):
        m = RE_CALIB_TIME.search(text)
        if not m:
            continue
        calib_s = float(m.group(1))
        total = lg.train_time_ms / 1000.0 + calib_s
        r["calibration_s"] = calib_s
        if total > TRAIN_CAP_MS / 1000.0:
            warnings.append(f"{lg.name}:{i}: training stopped at {lg.train_time_ms / 1000:.1f} s and calibration "
                            f"took {calib_s:.1f} s after it: {total:.1f} s of the 600 s training budget")
        return


def check_logs(logs: list[RunLog], script_bytes: int | None, script_name: str, submission: dict | None,
               submission_name: str, limits: dict, warnings: list[str], non_record: bool = False) -> list[Finding]:
    """Returns the LIMITS findings on the logs (and submission.json, when given); fills ``limits`` with what each
    run logged and appends to ``warnings``. non_record: the non-record track allows longer runs; time overruns
    become warnings there."""
    out: list[Finding] = []
    timed: list[Finding] = []
    runs = {}
    for lg in logs:
        r = {"seed": lg.seed}
        warnings.extend(f"{lg.name}: text log and JSON run file disagree: {c} (limits are checked on the larger "
                        "value)" for c in lg.conflicts)
        timed += _train_time(lg, r, warnings)
        _calibration_time(lg, r, warnings)
        timed += _eval_time(lg, r)
        out += _artifact(lg, r, script_bytes, warnings)
        out += _code_bytes(lg, r, script_bytes, script_name, warnings)
        if lg.final is not None:
            r["final"] = {"metric": lg.final.metric, "val_loss": lg.final.val_loss, "val_bpb": lg.final.val_bpb}
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


def _submission_finder(sub: dict, name: str) -> Callable[[str, str], Finding]:
    """Returns a function (key, explanation) -> LIMITS finding on submission.json, with the key's line as evidence."""
    try:
        text_lines = Path(sub.get("__path__", "")).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        text_lines = []

    def finding(key: str, expl: str) -> Finding:
        ln = next((i for i, t in enumerate(text_lines, 1) if f'"{key}"' in t), 0)
        ev = f"{ln}: {text_lines[ln - 1].strip()}" if ln else f'"{key}": {sub.get(key)!r}'
        return Finding("LIMITS", ACTIVE, name, ln, ev, expl, RULINGS["LIMITS"])
    return finding


def _submission_caps(sub: dict, name: str, finding: Callable[[str, str], Finding], logs: list[RunLog],
                     script_bytes: int | None, script_name: str, warnings: list[str],
                     non_record: bool) -> list[Finding]:
    """Returns the findings for submission.json's bytes_total and eval_time_seconds over the caps; missing keys and
    byte counts that disagree with the script or the logs are warnings."""
    out = []
    missing = [k for k in ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total",
                           "bytes_code") if k not in sub]
    if missing:
        warnings.append(f"{name}: missing keys {', '.join(missing)}")
    bt = sub.get("bytes_total")
    if isinstance(bt, (int, float)) and bt > ARTIFACT_CAP:
        out.append(finding("bytes_total", f"bytes_total is {int(bt):,}, over the 16,000,000-byte cap."))
    bc = sub.get("bytes_code")
    if isinstance(bc, (int, float)) and script_bytes is not None and int(bc) != script_bytes:
        warnings.append(f"{name}: bytes_code {int(bc):,} differs from the submitted {script_name} "
                        f"({script_bytes:,} bytes)")
    et = sub.get("eval_time_seconds")
    if isinstance(et, (int, float)) and et > 600:
        if non_record:
            warnings.append(f"{name}: eval_time_seconds is {et}, over 600 s (non-record track)")
        else:
            out.append(finding("eval_time_seconds", f"eval_time_seconds is {et}, over the 600 s cap."))
    arts = [lg.artifact_bytes for lg in logs if lg.artifact_bytes is not None]
    if isinstance(bt, (int, float)) and arts and int(bt) < max(arts):
        warnings.append(f"{name}: bytes_total {int(bt):,} is below the largest logged artifact ({max(arts):,} bytes)")
    return out


def _submission_scores(sub: dict, name: str, finals: list[RunLog], warnings: list[str]) -> None:
    """Warn when submission.json's val_loss / val_bpb is neither the logs' mean nor one run's score."""
    for key in ("val_loss", "val_bpb"):
        v = sub.get(key)
        vals = [getattr(lg.final, key) for lg in finals if math.isfinite(getattr(lg.final, key))]
        if not isinstance(v, (int, float)) or not vals:
            continue
        mean = sum(vals) / len(vals)
        if abs(v - mean) > 5e-4 and not any(abs(v - x) <= 5e-4 for x in vals):
            warnings.append(f"{name}: {key} {v} does not match the logs (mean over {len(vals)} run(s): {mean:.8f})")


def _submission_seeds(sub: dict, name: str, finding: Callable[[str, str], Finding], logs: list[RunLog],
                      finals: list[RunLog], warnings: list[str]) -> list[Finding]:
    """Returns the findings for per-seed artifacts over the cap; claimed seeds without a log, per-seed scores that
    differ from the logs and a record track with fewer than 3 seeds are warnings."""
    out = []
    seeds_claimed = sub.get("seeds")
    log_seeds = {lg.seed for lg in logs if lg.seed is not None}
    if isinstance(seeds_claimed, list):
        miss = [s for s in seeds_claimed if isinstance(s, int) and s not in log_seeds]
        if miss and logs:
            warnings.append(f"{name}: no log found for seed(s) {', '.join(map(str, miss))}")
    sr = sub.get("seed_results")
    for seed, res in (sr.items() if isinstance(sr, dict) else ()):
        lg = next((x for x in finals if str(x.seed) == str(seed)), None)
        if not isinstance(res, dict) or lg is None:
            continue
        for key in ("val_loss", "val_bpb"):
            v, logged = res.get(key), getattr(lg.final, key)
            if isinstance(v, (int, float)) and abs(v - logged) > 5e-4:
                warnings.append(f"{name}: seed {seed} {key} {v} differs from {lg.name} ({logged:.8f})")
        ab = res.get("artifact_bytes")
        if isinstance(ab, (int, float)) and ab > ARTIFACT_CAP:
            out.append(finding("artifact_bytes", f"seed {seed} artifact_bytes {int(ab):,} is over the "
                                                 "16,000,000-byte cap."))
    n_seeds = len(log_seeds) or (len(seeds_claimed) if isinstance(seeds_claimed, list) else 0)
    if "10min" in str(sub.get("track", "")) and n_seeds and n_seeds < 3:
        warnings.append(f"{name}: record track with {n_seeds} seed(s); records usually show 3")
    return out


def _check_submission(sub: dict, name: str, logs: list[RunLog], script_bytes: int | None, script_name: str,
                      limits: dict, warnings: list[str], non_record: bool = False) -> list[Finding]:
    """Returns the LIMITS findings on submission.json; its disagreements with the logs and the submitted script
    go to ``warnings``, its key numbers to ``limits["submission"]``."""
    finding = _submission_finder(sub, name)
    finals = [lg for lg in logs if lg.final is not None]
    out = _submission_caps(sub, name, finding, logs, script_bytes, script_name, warnings, non_record)
    _submission_scores(sub, name, finals, warnings)
    out += _submission_seeds(sub, name, finding, logs, finals, warnings)
    limits["submission"] = {k: sub.get(k) for k in ("val_loss", "val_bpb", "bytes_total", "bytes_code", "seeds")
                            if k in sub}
    return out




@register
class LogLimits(Rule):
    """Training and evaluation over 600 s, an artifact over 16,000,000 bytes, logged code bytes not those of the
    submitted file, submission.json over the caps (the non-record track allows longer runs)."""
    id = "LIMITS"
    title = "time and size limits in the logs and submission.json"
    scope = "logs"
    fixtures = ("folders/limits_logs", "folders/kit_record", "folders/log_activated")

    def check(self, ctx: LogContext) -> list[Finding]:
        if ctx.non_record:
            ctx.limits["track"] = "non-record"
        return check_logs(ctx.logs, ctx.script_bytes, ctx.script_name, ctx.submission, ctx.submission_name,
                          ctx.limits, ctx.warnings, non_record=ctx.non_record)
