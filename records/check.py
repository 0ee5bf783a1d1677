"""``python -m records check PATH``: is a record folder (or a submission.json) consistent?

Works on our folders and on anyone else's. Upstream folders vary (other key names, older
log formats without a code hash, scores without ``_exact`` lines), so every discrepancy is
reported as a *finding* and everything that merely cannot be verified as a *note*; no input
makes it crash. Exit status: 0 consistent, 1 findings, 2 unreadable.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from compliance.logparse import RunLog, load_text_log
from kitlib import stats

from .common import (
    ARTIFACT_LIMIT_BYTES, EVAL_LIMIT_S, RECORD_WORLD_SIZE, REQUIRED_KEYS, TRAIN_CAP_GRACE_S, TRAIN_LIMIT_S,
    is_record_track, not_a_training_run, sha256_bytes,
)
from .wrap import decode_wrapper, minified

ALIASES = {
    "val_bpb": ("mean_val_bpb", "val_bpb_mean", "score", "bpb", "mean_bpb"),
    "val_loss": ("mean_val_loss", "val_loss_mean", "val_loss_mean_nats", "mean_loss"),
    "bytes_total": ("artifact_bytes", "artifact_size_bytes", "total_bytes", "bytes_total_max", "artifact_bytes_mean"),
    "bytes_code": ("code_bytes", "code_size_bytes"),
}
LOG_SUFFIXES = (".log", ".txt")
NOT_LOGS = ("requirements", "readme", "license", "notes")
MEAN_TOL = 1e-4


@dataclasses.dataclass
class Finding:
    field: str
    message: str

    def as_dict(self) -> dict:
        return {"field": self.field, "message": self.message}


@dataclasses.dataclass
class CheckResult:
    path: str
    verdict: str = "consistent"  # consistent | inconsistent | unreadable
    submission_file: str | None = None  # the submission*.json that was read
    findings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    logs: list = dataclasses.field(default_factory=list)
    summary: dict = dataclasses.field(default_factory=dict)

    def find(self, field: str, message: str) -> None:
        self.findings.append(Finding(field, message))

    def note(self, field: str, message: str) -> None:
        self.notes.append(Finding(field, message))

    @property
    def exit_code(self) -> int:
        return {"consistent": 0, "inconsistent": 1}.get(self.verdict, 2)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "submission_file": self.submission_file,
            "verdict": self.verdict,
            "findings": [f.as_dict() for f in self.findings],
            "notes": [n.as_dict() for n in self.notes],
            "logs": self.logs,
            "summary": self.summary,
        }

    def text(self) -> str:
        lines = [f"records check {self.path}: {self.verdict}"
                 + (f" ({len(self.findings)} finding{'s' if len(self.findings) != 1 else ''})" if self.findings else "")
                 + (f"; read {self.submission_file}" if self.submission_file else "")]
        for f in self.findings:
            lines.append(f"  finding  {f.field}: {f.message}")
        for n in self.notes:
            lines.append(f"  note     {n.field}: {n.message}")
        if self.summary:
            s = self.summary
            bits = [f"{k}={v}" for k, v in s.items() if v is not None and not isinstance(v, (dict, list))]
            if bits:
                lines.append("  summary  " + " ".join(bits))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Small value helpers


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decimals(v: float) -> int:
    r = repr(float(v))
    if "e" in r or "E" in r:
        return 12
    return len(r.split(".")[1]) if "." in r else 0


def _tol(v: float) -> float:
    """1e-4, or half a unit in the last place the JSON value was written with, if coarser."""
    return max(MEAN_TOL, 0.5 * 10 ** (-_decimals(v)) + 1e-12)


def _seed_key(s: Any) -> int | None:
    if _is_int(s):
        return s
    if isinstance(s, str) and s.strip().isdigit():
        return int(s.strip())
    return None


# --------------------------------------------------------------------------------------
# Locating things


def find_logs(folder: Path) -> list[Path]:
    out = []
    for base in (folder, folder / "logs"):
        if not base.is_dir():
            continue
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        for p in entries:
            if p.is_file() and p.suffix.lower() in LOG_SUFFIXES and not p.name.lower().startswith(NOT_LOGS):
                out.append(p)
    return out


def looks_like_record_folder(folder: Path) -> bool:
    """Is the folder holding a submission.json a record folder (and not, say, the kit's root)?"""
    if folder.parent.name.startswith("track_"):
        return True
    if any(p.name.startswith("train") for p in find_logs(folder) if p.parent == folder):
        return True
    return (folder / "train_gpt.py").is_file() and not (folder / "records").is_dir() and not (folder / ".git").exists()


def find_submission(folder: Path) -> tuple[Path | None, str]:
    """The folder's submission file: ``submission.json``, else its single ``submission*.json`` whatever the suffix
    (upstream has ``submission_ternary.json`` and the like). (None, why) when there is none or no single one."""
    plain = folder / "submission.json"
    if plain.is_file():
        return plain, ""
    try:
        found = sorted(p for p in folder.glob("submission*.json") if p.is_file())
    except OSError as exc:
        return None, f"cannot list {folder}: {exc.strerror or exc}"
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no submission.json (or submission*.json) in {folder}"
    return None, (f"{len(found)} submission files in {folder} ({', '.join(p.name for p in found)}): "
                  "give the one to check")


def _load_json(path: Path) -> tuple[Any, str | None]:
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"{path.name} is not valid JSON: {exc}"


# --------------------------------------------------------------------------------------
# Logs of a folder


@dataclasses.dataclass
class FolderLogs:
    runs: list  # unique scored runs, RunLog
    all_runs: list  # every parsed candidate


def read_folder_logs(folder: Path, res: CheckResult | None = None) -> FolderLogs:
    """The folder's scored runs, each counted once, and every log parsed; what is wrong with a log goes to ``res``
    (findings and notes), or nowhere without one."""
    res = res if res is not None else CheckResult(path=str(folder))
    scored: list[RunLog] = []
    every: list[RunLog] = []
    seen: dict[tuple, str] = {}
    for p in find_logs(folder):
        try:
            run = load_text_log(p)
        except Exception as exc:  # noqa: BLE001 - never crash on a log
            res.find(f"log:{p.name}", f"cannot parse: {exc}")
            continue
        every.append(run)
        rel = str(p.relative_to(folder))
        for prob in run.problems:
            res.find(f"log:{rel}", prob)
        if run.final is None:
            if run.has_training_lines or run.scores or run.code_sha256:
                res.find(f"log:{rel}", "incomplete log: no final score line (final_*_exact / legal_ttt_exact)")
            else:
                res.note(f"log:{rel}", "not a training log (no step or score lines); ignored")
            continue
        if run.final.val_loss is None or run.final.val_bpb is None or not (
            math.isfinite(run.final.val_loss) and math.isfinite(run.final.val_bpb)
        ):
            res.find(f"log:{rel}", f"final score is not a finite number: {run.final}")
            continue
        why = not_a_training_run(run)
        if why:
            res.find(f"log:{rel}", f"not a seed of this submission: {why}")
            continue
        if not run.final.exact:
            res.note(f"log:{rel}", f"no *_exact score line; using the last '{run.final.metric}' line")
        key = (round(run.final.val_loss, 8), round(run.final.val_bpb, 8), run.seed)
        key_noseed = key[:2]
        dup = seen.get(key) or next((v for k, v in seen.items() if k[:2] == key_noseed and (k[2] is None or run.seed is None)), None)
        if dup:
            res.note(f"log:{rel}", f"same final score as {dup}: counted once")
            continue
        seen[key] = rel
        scored.append(run)
    return FolderLogs(scored, every)


# --------------------------------------------------------------------------------------
# The check


def check_path(path: str | Path) -> CheckResult:
    res = CheckResult(path=str(path))
    try:
        _check(Path(path), res)
    except Exception as exc:  # noqa: BLE001 - last line of defence: report, never crash
        res.find("internal", f"checker error: {type(exc).__name__}: {exc}")
    if res.verdict != "unreadable":
        res.verdict = "inconsistent" if res.findings else "consistent"
    return res


def _unreadable(res: CheckResult, field: str, message: str) -> None:
    res.verdict = "unreadable"
    res.find(field, message)


def _check(path: Path, res: CheckResult) -> None:
    if not path.exists():
        return _unreadable(res, "path", f"{path} does not exist")
    folder: Path | None
    if path.is_dir():
        folder, (sub_path, why) = path, find_submission(path)
        if sub_path is None:
            return _unreadable(res, "submission.json", why)
        res.submission_file = sub_path.name
    else:
        sub_path = path
        res.submission_file = path.name
        folder = path.parent if looks_like_record_folder(path.parent) else None
    sub, err = _load_json(sub_path)
    if err:
        return _unreadable(res, "submission.json", err)
    if not isinstance(sub, dict):
        return _unreadable(res, "submission.json", f"top level is {type(sub).__name__}, not an object")

    rp = sub.get("record_path")
    if folder is None and isinstance(rp, str):
        cand = (sub_path.parent / rp)
        if cand.is_dir():
            folder = cand
            inner, ierr = _load_json(cand / "submission.json")
            if ierr:
                res.find("record_path", f"{rp}: {ierr}")
            elif inner != sub:
                res.find("record_path", f"{sub_path.name} differs from {rp}/submission.json")
        else:
            res.find("record_path", f"{rp} is not a folder beside {sub_path.name}")
    if folder is None:
        res.note("folder", "no record folder beside this file: only keys, types and internal consistency checked")

    vals = _check_keys(sub, res)
    _check_internal(sub, vals, res)
    if folder is not None:
        _check_folder(folder, sub, vals, res)


def _check_keys(sub: dict, res: CheckResult) -> dict:
    """Required keys and types. Returns the usable values (aliases resolved)."""
    vals: dict[str, Any] = {}
    for key in REQUIRED_KEYS:
        if key in sub:
            vals[key] = sub[key]
            continue
        alias = next((a for a in ALIASES.get(key, ()) if a in sub), None)
        if alias:
            res.find(key, f"required key missing (a value is under '{alias}'; it is used for the checks below)")
            vals[key] = sub[alias]
        else:
            res.find(key, "required key missing")
    for key in ("author", "github_id", "name", "blurb"):
        if key in vals:
            v = vals[key]
            if not isinstance(v, str):
                res.find(key, f"should be a string, is {type(v).__name__}")
            elif not v.strip():
                res.find(key, "is empty")
    if "date" in vals:
        v = vals["date"]
        if not isinstance(v, str):
            res.find("date", f"should be an ISO 8601 string, is {type(v).__name__}")
        else:
            try:
                _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                res.find("date", f"{v!r} is not ISO 8601")
    for key in ("val_loss", "val_bpb"):
        if key in vals:
            v = vals[key]
            if not _is_num(v):
                res.find(key, f"should be a finite number, is {json.dumps(v)[:40]}")
                vals[key] = None
            elif v <= 0:
                res.find(key, f"{v} is not positive")
    for key in ("bytes_total", "bytes_code"):
        if key in vals:
            v = vals[key]
            if not _is_int(v):
                res.find(key, f"should be an integer number of bytes, is {json.dumps(v)[:40]}")
                vals[key] = int(v) if _is_num(v) and float(v).is_integer() else None
            elif v < 0:
                res.find(key, f"{v} is negative")
    # Common optional keys: type only.
    typed = {
        "track": str, "hardware": str, "pytorch_version": str, "technique_summary": str,
        "val_bpb_std": "num|null", "val_loss_std": "num|null", "pre_quant_val_bpb": "num|null",
        "eval_time_seconds": "num|null", "val_loss_mean_nats": "num",
    }
    for key, typ in typed.items():
        if key not in sub:
            continue
        v = sub[key]
        if typ is str and not isinstance(v, str):
            res.find(key, f"should be a string, is {type(v).__name__}")
        elif typ == "num|null" and not (v is None or _is_num(v)):
            res.find(key, f"should be a number, is {json.dumps(v)[:40]}")
        elif typ == "num" and not _is_num(v):
            res.find(key, f"should be a number, is {json.dumps(v)[:40]}")
    if "seeds" in sub:
        s = sub["seeds"]
        if not isinstance(s, list) or any(_seed_key(x) is None for x in s):
            res.find("seeds", f"should be a list of integer seeds, is {json.dumps(s)[:60]}")
        elif len({_seed_key(x) for x in s}) != len(s):
            res.find("seeds", f"repeats a seed: {s}")
    if "seed_results" in sub:
        sr = sub["seed_results"]
        if not isinstance(sr, dict):
            res.find("seed_results", f"should be an object {{seed: {{val_bpb, ...}}}}, is {type(sr).__name__}")
        else:
            for k, v in sr.items():
                if _seed_key(k) is None:
                    res.find("seed_results", f"key {k!r} is not a seed")
                if not isinstance(v, dict):
                    res.find(f"seed_results.{k}", f"should be an object, is {type(v).__name__}")
                    continue
                for f in ("val_bpb", "val_loss", "step_avg_ms"):
                    if f in v and not (v[f] is None or _is_num(v[f])):
                        res.find(f"seed_results.{k}.{f}", f"should be a number, is {json.dumps(v[f])[:40]}")
                for f in ("artifact_bytes", "steps"):
                    if f in v and not (v[f] is None or _is_int(v[f])):
                        res.find(f"seed_results.{k}.{f}", f"should be an integer, is {json.dumps(v[f])[:40]}")
    if "compliance" in sub:
        c = sub["compliance"]
        if not isinstance(c, dict):
            res.find("compliance", f"should be an object, is {type(c).__name__}")
        else:
            for k, v in c.items():
                if k == "auditor_verdict":
                    if not isinstance(v, str):
                        res.find("compliance.auditor_verdict", "should be a string")
                elif not (v is None or isinstance(v, bool)):
                    res.find(f"compliance.{k}", f"should be true/false/null, is {json.dumps(v)[:40]}")
    return vals


def _seed_results(sub: dict) -> dict[int, dict]:
    sr = sub.get("seed_results")
    out = {}
    if isinstance(sr, dict):
        for k, v in sr.items():
            s = _seed_key(k)
            if s is not None and isinstance(v, dict):
                out[s] = v
    return out


def _check_internal(sub: dict, vals: dict, res: CheckResult) -> None:
    """Consistency of the JSON with itself."""
    sr = _seed_results(sub)
    seeds = sub.get("seeds") if isinstance(sub.get("seeds"), list) else None
    seed_list = [_seed_key(s) for s in seeds] if seeds is not None else None
    if seed_list is not None and sr and None not in seed_list and set(seed_list) != set(sr):
        res.find("seeds", f"seeds {sorted(seed_list)} differ from seed_results keys {sorted(sr)}")
    bpbs = [v["val_bpb"] for v in sr.values() if _is_num(v.get("val_bpb"))]
    losses = [v["val_loss"] for v in sr.values() if _is_num(v.get("val_loss"))]
    vb, vl = vals.get("val_bpb"), vals.get("val_loss")
    if bpbs and len(bpbs) == len(sr) and _is_num(vb):
        m = stats.mean(bpbs)
        if abs(m - vb) > _tol(vb):
            res.find("val_bpb", f"{vb} is not the mean of seed_results ({m:.8f})")
    if losses and len(losses) == len(sr) and _is_num(vl):
        m = stats.mean(losses)
        if abs(m - vl) > _tol(vl):
            res.find("val_loss", f"{vl} is not the mean of seed_results ({m:.8f})")
    std = sub.get("val_bpb_std")
    if _is_num(std) and len(bpbs) >= 2 and len(bpbs) == len(sr):
        s = stats.sample_std(bpbs)
        if abs(s - std) > max(_tol(std), 1e-6) and abs(s - std) > 0.02 * s:
            pop = s * math.sqrt((len(bpbs) - 1) / len(bpbs))
            hint = " (it matches the population std, ddof=0)" if abs(pop - std) <= max(_tol(std), 1e-6) else ""
            res.find("val_bpb_std", f"{std} is not the sample std (ddof=1) of seed_results ({s:.8f}){hint}")
    bt = vals.get("bytes_total")
    if _is_int(bt) and bt > ARTIFACT_LIMIT_BYTES:
        res.find("bytes_total", f"{bt:,} bytes is over the {ARTIFACT_LIMIT_BYTES:,}-byte limit")
    comp = sub.get("compliance") if isinstance(sub.get("compliance"), dict) else {}
    if _is_int(bt) and comp.get("artifact_under_16mb") is True and bt > ARTIFACT_LIMIT_BYTES:
        res.find("compliance.artifact_under_16mb", "true, but bytes_total is over the limit")
    n_seeds = len(seed_list) if seed_list is not None else (len(sr) if sr else None)
    if n_seeds is not None and isinstance(comp.get("three_seeds"), bool) and comp["three_seeds"] != (n_seeds >= 3):
        res.find("compliance.three_seeds", f"{comp['three_seeds']}, but the entry lists {n_seeds} seed(s)")
    res.summary.update({"val_bpb": vb if _is_num(vb) else None, "val_loss": vl if _is_num(vl) else None,
                        "bytes_total": bt if _is_int(bt) else None, "track": sub.get("track")})


def _check_folder(folder: Path, sub: dict, vals: dict, res: CheckResult) -> None:
    logs = read_folder_logs(folder, res)
    runs = logs.runs
    res.logs = [
        {"file": str(r.text_path.relative_to(folder)) if r.text_path else None, "seed": r.seed,
         "metric": r.final.metric if r.final else None, "val_loss": r.final.val_loss if r.final else None,
         "val_bpb": r.final.val_bpb if r.final else None, "artifact_bytes": r.artifact_bytes,
         "code_sha256": r.code_sha256, "train_time_s": r.train_time_s, "eval_time_s": r.eval_time_s,
         "world_size": r.world_size}
        for r in runs
    ]
    # --- the script
    script = folder / "train_gpt.py"
    script_bytes = None
    inner = None
    if not script.is_file():
        res.find("train_gpt.py", "missing from the folder")
    else:
        try:
            script_bytes = script.read_bytes()
        except OSError as exc:
            res.find("train_gpt.py", f"unreadable: {exc}")
    if script_bytes is not None:
        inner = decode_wrapper(script_bytes)
        human = folder / "train_gpt_human.py"
        if inner is not None:
            res.note("train_gpt.py", f"self-extracting wrapper ({len(script_bytes):,} bytes) of a "
                                     f"{len(inner):,}-byte source (decoded without running it)")
            if human.is_file():
                try:
                    hb = human.read_bytes()
                except OSError:
                    hb = None
                if hb is not None and hb != inner and minified(hb) == inner:
                    res.note("train_gpt_human.py", "train_gpt.py holds its minified form (CODE_FORM=minified)")
                elif hb is not None and hb != inner:
                    res.find("train_gpt_human.py", "differs from the source train_gpt.py decodes to (and from its "
                                                   "minified form)")
        bc = vals.get("bytes_code")
        if _is_int(bc) and bc != len(script_bytes):
            res.find("bytes_code", f"{bc:,} but train_gpt.py is {len(script_bytes):,} bytes")
        res.summary["bytes_code_file"] = len(script_bytes)
    ok_hashes = {}
    if script_bytes is not None:
        ok_hashes[sha256_bytes(script_bytes)] = "train_gpt.py"
        if inner is not None:
            ok_hashes.setdefault(sha256_bytes(inner), "the source the wrapper decodes to")
    ok_sizes = {len(script_bytes)} if script_bytes is not None else set()
    if inner is not None:
        ok_sizes.add(len(inner))

    if not runs:
        res.find("logs", "no training log with a final score in the folder")
        return

    # --- scores: the mean over seeds
    vb, vl = vals.get("val_bpb"), vals.get("val_loss")
    bpbs = [r.final.val_bpb for r in runs]
    losses = [r.final.val_loss for r in runs]
    mb, ml = stats.mean(bpbs), stats.mean(losses)
    res.summary.update({"logs": len(runs), "logs_val_bpb_mean": round(mb, 8), "logs_val_loss_mean": round(ml, 8),
                        "logs_val_bpb_std": None if len(runs) < 2 else round(stats.sample_std(bpbs), 8)})
    for key, v, m, per in (("val_bpb", vb, mb, bpbs), ("val_loss", vl, ml, losses)):
        if not _is_num(v):
            continue
        if abs(v - m) > _tol(v):
            single = [r for r, x in zip(runs, per) if abs(x - v) <= _tol(v)]
            extra = f"; it matches {single[0].name} alone" if single and len(runs) > 1 else ""
            res.find(key, f"{v} disagrees with the mean of the {len(runs)} log(s) ({m:.8f}){extra}")

    # --- seeds
    sr = _seed_results(sub)
    seeds = sub.get("seeds") if isinstance(sub.get("seeds"), list) else None
    listed = {_seed_key(s) for s in seeds} - {None} if seeds is not None else set(sr)
    by_seed = {r.seed: r for r in runs if r.seed is not None}
    unknown = [r for r in runs if r.seed is None]
    if unknown:
        res.note("seeds", f"{len(unknown)} log(s) do not state their seed: {', '.join(r.name for r in unknown)}")
    if listed:
        missing = sorted(listed - set(by_seed))
        extra = sorted(set(by_seed) - listed)
        if missing and len(missing) > len(unknown):
            res.find("seeds", f"no log for seed(s) {missing}")
        if extra:
            res.find("seeds", f"log(s) for seed(s) {extra} not listed in the submission")
        if len(runs) != len(listed) and not missing and not extra:
            res.find("seeds", f"{len(listed)} seeds listed but {len(runs)} distinct logs")
    for s, entry in sr.items():
        r = by_seed.get(s)
        if r is None:
            continue
        for f, logged in (("val_bpb", r.final.val_bpb), ("val_loss", r.final.val_loss)):
            v = entry.get(f)
            if _is_num(v) and abs(v - logged) > _tol(v):
                res.find(f"seed_results.{s}.{f}", f"{v} but {r.name} says {logged:.8f}")
        ab = entry.get("artifact_bytes")
        if _is_int(ab) and r.artifact_bytes is not None and ab != r.artifact_bytes:
            alt = (r.artifact_bytes - (r.code_bytes or 0) + len(script_bytes)) if script_bytes is not None else None
            if ab != alt:
                res.find(f"seed_results.{s}.artifact_bytes", f"{ab:,} but {r.name} says {r.artifact_bytes:,}")
        st = entry.get("steps")
        if _is_int(st) and r.steps is not None and st != r.steps:
            res.find(f"seed_results.{s}.steps", f"{st} but {r.name} says {r.steps}")

    # --- bytes
    totals = [r.artifact_bytes for r in runs if r.artifact_bytes is not None]
    bt = vals.get("bytes_total")
    if not totals:
        res.note("bytes_total", "no log states 'Total submission size': not verified")
    elif _is_int(bt):
        ok = set(totals) | {max(totals), round(stats.mean(totals))}
        if script_bytes is not None:
            models = [r.model_bytes if r.model_bytes is not None else
                      (r.artifact_bytes - r.code_bytes if r.code_bytes is not None else None) for r in runs]
            models = [m for m in models if m is not None]
            ok |= {m + len(script_bytes) for m in models}
            if models:
                ok |= {max(models) + len(script_bytes), round(stats.mean(models)) + len(script_bytes)}
        if bt not in ok:
            res.find("bytes_total", f"{bt:,} matches no log's 'Total submission size' ({', '.join(f'{t:,}' for t in totals)})")
    # --- code hash and code size
    hashed = [r for r in runs if r.code_sha256]
    if not hashed:
        res.note("code_sha256", "the logs record no code hash (older format): script identity not verified")
    for r in hashed:
        if ok_hashes and r.code_sha256 not in ok_hashes:
            res.find("train_gpt.py", f"sha256 {next(iter(ok_hashes))[:16]}... is not the code_sha256 "
                                     f"{r.code_sha256[:16]}... that {r.name} ran")
    for r in runs:
        if r.code_bytes is not None and ok_sizes and r.code_bytes not in ok_sizes and not r.code_sha256:
            res.find("train_gpt.py", f"{r.name} ran {r.code_bytes:,} bytes of code; train_gpt.py is "
                                     f"{len(script_bytes):,} bytes")
    # --- limits
    track = sub.get("track") if isinstance(sub.get("track"), str) else None
    parent = folder.resolve().parent.name
    record = is_record_track(track) or is_record_track(parent)
    if track and parent.startswith("track_") and is_record_track(track) != is_record_track(parent):
        res.find("track", f"'{track}' but the folder is under {parent}")
    res.summary["record_track"] = record
    comp = sub.get("compliance") if isinstance(sub.get("compliance"), dict) else {}
    over_art = [r for r in runs if r.artifact_bytes is not None and r.artifact_bytes > ARTIFACT_LIMIT_BYTES
                and not (script_bytes is not None and r.model_bytes is not None
                         and r.model_bytes + len(script_bytes) <= ARTIFACT_LIMIT_BYTES)]
    for r in over_art:
        res.find(f"log:{r.name}", f"artifact {r.artifact_bytes:,} bytes is over the {ARTIFACT_LIMIT_BYTES:,}-byte limit")
    if over_art and comp.get("artifact_under_16mb") is True:
        res.find("compliance.artifact_under_16mb", "true, but a log's artifact is over the limit")
    slow_train = [r for r in runs if r.train_time_s is not None and r.train_time_s > TRAIN_LIMIT_S + TRAIN_CAP_GRACE_S]
    slow_eval = [r for r in runs if r.eval_time_s is not None and r.eval_time_s > EVAL_LIMIT_S]
    if comp.get("train_under_600s") is True and slow_train:
        res.find("compliance.train_under_600s", f"true, but {slow_train[0].name} trained {slow_train[0].train_time_s:.1f} s")
    if comp.get("eval_under_600s") is True and slow_eval:
        res.find("compliance.eval_under_600s", f"true, but {slow_eval[0].name} evaluated {slow_eval[0].eval_time_s:.1f} s")
    if record:
        for r in slow_train:
            res.find(f"log:{r.name}", f"train_time {r.train_time_s:.3f} s is over the {TRAIN_LIMIT_S:.0f} s limit")
        for r in slow_eval:
            res.find(f"log:{r.name}", f"evaluation took {r.eval_time_s:.1f} s, over the {EVAL_LIMIT_S:.0f} s limit")
        for r in runs:
            if r.world_size is not None and (r.world_size != RECORD_WORLD_SIZE or (r.device not in (None, "cuda"))):
                res.find(f"log:{r.name}", f"ran on {r.world_size}x {r.device or '?'}, not {RECORD_WORLD_SIZE}x cuda")
            if r.train_time_s is not None and TRAIN_LIMIT_S < r.train_time_s <= TRAIN_LIMIT_S + TRAIN_CAP_GRACE_S:
                res.note(f"log:{r.name}", f"train_time {r.train_time_s:.3f} s: the final step ended past "
                                          f"{TRAIN_LIMIT_S:.0f} s, within the {TRAIN_CAP_GRACE_S} s allowance")
            if r.world_size is None:
                res.note(f"log:{r.name}", "GPU count not stated: not verified")
            if r.train_time_s is None:
                res.note(f"log:{r.name}", "train time not stated: not verified")
            if r.eval_time_s is None:
                res.note(f"log:{r.name}", "eval time not stated: not verified")


# --------------------------------------------------------------------------------------
# A reference for pack's statistics


def reference_scores(path: Path) -> dict:
    """A standing record's scores: {bpbs: [..] | None, losses: [..] | None, bpb, loss, source}.

    From a record folder's logs first (per seed), else its submission.json's seed_results, else its
    mean val_bpb / val_loss. Lists are per seed; ``bpb``/``loss`` are single means.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    sub_path = find_submission(folder)[0] if path.is_dir() else path
    out = {"bpbs": None, "losses": None, "bpb": None, "loss": None, "source": str(path)}
    if path.is_dir():
        runs = read_folder_logs(folder).runs
        if runs:
            out["losses"] = [r.final.val_loss for r in runs]
            out["bpbs"] = [r.final.val_bpb for r in runs]
            out["source"] = f"{folder} ({len(runs)} log(s))"
            return out
    sub, err = _load_json(sub_path) if sub_path is not None and sub_path.is_file() else (None, "missing")
    if not isinstance(sub, dict):
        return out
    sr = _seed_results(sub)
    bs = [v["val_bpb"] for v in sr.values() if _is_num(v.get("val_bpb"))]
    ls = [v["val_loss"] for v in sr.values() if _is_num(v.get("val_loss"))]
    if sr and (len(bs) == len(sr) or len(ls) == len(sr)):
        out["bpbs"] = bs if len(bs) == len(sr) else None
        out["losses"] = ls if len(ls) == len(sr) else None
        out["source"] = f"{sub_path} (seed_results)"
        return out
    for key in ("val_bpb",) + ALIASES["val_bpb"]:
        if _is_num(sub.get(key)):
            out["bpb"] = float(sub[key])
            break
    for key in ("val_loss",) + ALIASES["val_loss"]:
        if _is_num(sub.get(key)):
            out["loss"] = float(sub[key])
            break
    out["source"] = f"{sub_path}"
    return out
