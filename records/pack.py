"""``python -m records pack``: finished runs -> records/<track>/YYYY-MM-DD_<Name>/.

Everything is validated before anything is written: first the arguments (``UsageError``: files that are not there,
an output path that cannot be written, a bad date), then the runs (``Refusal``: the entry is not submittable).
Either prints one line and leaves the disk untouched. The folder is built in a temporary directory beside its
destination and renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from compliance.logparse import RunLog, load_run
from kitlib import stats
from kitlib.fileio import unwritable, write_atomic
from kitlib.scripts import load_script

from . import settings as F
from .audit import Audit, compliance_audit, describe_finding, run_audit
from .check import reference_scores
from .common import (
    ARTIFACT_LIMIT_BYTES, EVAL_LIMIT_S, NON_RECORD_TRACK, RECORD_DEVICE, RECORD_TRACK, RECORD_WORLD_SIZE,
    TRAIN_CAP_GRACE_S, TRAIN_LIMIT_S, eval_within_limit, not_a_training_run, sha256_bytes, slug, train_within_limit,
)
from .wrap import WrapError, decode_wrapper, make_wrapper


class Refusal(Exception):
    """Why pack will not write this entry (one line; exit status 1)."""


class UsageError(Refusal):
    """An argument that cannot be used (one line; exit status 2): checked before any run is read."""


@dataclasses.dataclass
class PackOptions:
    runs: list
    name: str
    author: str
    github_id: str
    blurb: str | None = None
    date: str | None = None
    wrap: bool = False
    reference_bpb: float | None = None
    reference_loss: float | None = None
    reference: str | None = None
    script: str = "train_gpt.py"
    out_root: str = "records"
    top_json: str | None = "submission.json"
    requirements: str | None = None
    force: bool = False
    skip_audit: bool = False
    auditor: Callable[[Path, dict], dict] | None = None  # (script, settings) -> the auditor's JSON object


@dataclasses.dataclass
class PackResult:
    folder: Path
    track: str
    submission: dict
    readme: str


# --------------------------------------------------------------------------------------
# Reading and validating the runs


def check_arguments(opts: PackOptions) -> _dt.date:
    """Every argument, before any run is read (UsageError). Returns the entry's date."""
    if not opts.runs:
        raise UsageError("no runs given")
    for p in map(Path, opts.runs):
        if not p.is_file():
            raise UsageError(f"{p}: no such file" if not p.exists() else f"{p} is not a file")
    if not opts.name.strip():
        raise UsageError("--name is empty")
    try:
        date = _dt.date.fromisoformat(opts.date) if opts.date else _dt.datetime.now(_dt.timezone.utc).date()
    except ValueError:
        raise UsageError(f"--date {opts.date!r} is not YYYY-MM-DD") from None
    if not Path(opts.script).is_file():
        raise UsageError(f"script {opts.script} not found (give --script PATH)")
    if opts.requirements and not Path(opts.requirements).is_file():
        raise UsageError(f"--requirements {opts.requirements}: no such file")
    if opts.reference is not None and not Path(opts.reference).exists():
        raise UsageError(f"--reference {opts.reference}: no such folder or file")
    for value, what in ((opts.reference_bpb, "--reference-bpb"), (opts.reference_loss, "--reference-loss")):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{what} {value} is not a positive number")
    why = unwritable(opts.out_root, folder=True)
    if why:
        raise UsageError(f"--out-root {opts.out_root}: {why}")
    if opts.top_json:
        why = unwritable(opts.top_json)
        if why:
            raise UsageError(f"--top-json {opts.top_json}: {why}")
    return date


def load_runs(paths: list) -> list[RunLog]:
    runs = []
    for p in map(Path, paths):
        run = load_run(p)
        if run.text_path is None:
            raise Refusal(f"{p}: no text log beside it (expected {p.with_suffix('.txt').name})")
        name = run.text_path.name
        if run.problems:
            raise Refusal(f"{name}: {run.problems[0]}")
        if run.json_path is not None and run.status != "complete":
            raise Refusal(f"{name}: incomplete run (JSON status is {run.status!r}, not 'complete')")
        if run.final is None or not run.final.exact:
            raise Refusal(f"{name}: incomplete log (no final_*_exact score line)")
        if any(v is None or not math.isfinite(v) for v in (run.final.val_loss, run.final.val_bpb)):
            raise Refusal(f"{name}: final score is not a finite number")
        if run.conflicts:
            raise Refusal(f"{name}: text log and JSON disagree ({run.conflicts[0]})")
        if run.artifact_bytes is None:
            raise Refusal(f"{name}: incomplete log (no 'Total submission size' line)")
        if run.seed is None:
            raise Refusal(f"{name}: the log does not state its seed")
        if run.code_sha256 is None:
            raise Refusal(f"{name}: the log has no code_sha256 line; cannot tie it to a script")
        if run.config is None:
            raise Refusal(f"{name}: the log has no config line")
        why = not_a_training_run(run)
        if why:
            raise Refusal(f"{name} is not a seed of a submission: {why}")
        runs.append(run)
    return runs


def validate_runs(runs: list[RunLog]) -> None:
    seen: dict[int, str] = {}
    for r in runs:
        if r.seed in seen:
            raise Refusal(f"two runs share seed {r.seed}: {seen[r.seed]} and {r.name}")
        seen[r.seed] = r.name
    first = runs[0]
    for r in runs[1:]:
        if r.code_sha256 != first.code_sha256:
            raise Refusal(f"runs disagree: {r.name} ran code {r.code_sha256[:12]}..., "
                          f"{first.name} ran {first.code_sha256[:12]}...")
        keys = (set(r.config) | set(first.config)) - set(F.RUN_IDENTITY_KEYS)
        diff = sorted(k for k in keys if k not in r.config or k not in first.config
                      or not F.same_value(r.config[k], first.config[k]))
        if diff:
            shown = ", ".join(f"{k}={r.config.get(k)!r} vs {first.config.get(k)!r}" for k in diff[:4])
            more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
            raise Refusal(f"runs disagree on config apart from SEED/RUN_ID: {r.name} vs {first.name}: {shown}{more}")


def model_bytes(r: RunLog) -> int:
    if r.model_bytes is not None:
        return r.model_bytes
    return r.artifact_bytes - (r.code_bytes or 0)


def decide_track(runs: list[RunLog]) -> tuple[str, list[str]]:
    """(track, reasons it is not the record track)."""
    reasons = []
    for r in runs:
        tag = f"seed {r.seed}"
        if r.world_size != RECORD_WORLD_SIZE or r.device != RECORD_DEVICE:
            reasons.append(f"{tag} ran on {r.world_size or '?'}x {r.device or '?'} "
                           f"(the record track needs {RECORD_WORLD_SIZE}x {RECORD_DEVICE})")
        t = train_within_limit(r.train_time_s)
        if t is None:
            reasons.append(f"{tag}: the log does not state its training time")
        elif not t:
            reasons.append(f"{tag} trained {r.train_time_s:.3f} s (limit {TRAIN_LIMIT_S:.0f} s)")
        e = eval_within_limit(r.eval_time_s)
        if e is None:
            reasons.append(f"{tag}: the log does not state its evaluation time")
        elif not e:
            reasons.append(f"{tag} evaluated for {r.eval_time_s:.1f} s (limit {EVAL_LIMIT_S:.0f} s)")
    return (RECORD_TRACK if not reasons else NON_RECORD_TRACK), reasons


# --------------------------------------------------------------------------------------
# The entry


def _round(x: float | None, n: int = 8) -> float | None:
    return None if x is None else round(float(x), n)


def _hardware(runs: list[RunLog]) -> str:
    seen = []
    for r in runs:
        if r.device == "cuda":
            gpu = (r.gpu_name or "GPU").replace("_", " ")
            h = f"{r.world_size or '?'}x {gpu}"
        else:
            h = f"{r.world_size or '?'}x {(r.device or 'unknown').upper()}"
        if h not in seen:
            seen.append(h)
    return " / ".join(seen)


def _reference(opts: PackOptions, losses: list, mean_loss: float, mean_bpb: float) -> dict | None:
    """The record test (kitlib.stats.record_test) against the reference given, with ``reference_source`` (where the
    reference came from) and ``reference_val_bpb`` added; None without a reference."""
    given = [x is not None for x in (opts.reference_bpb, opts.reference_loss, opts.reference)]
    if sum(given) > 1:
        raise UsageError("give one of --reference-bpb, --reference-loss, --reference")
    ratio = mean_loss / mean_bpb
    if opts.reference_loss is not None:
        out = stats.record_test(losses, ref_loss=opts.reference_loss)
        return {"reference_source": f"--reference-loss {opts.reference_loss}", **out}
    if opts.reference_bpb is not None:
        ref = stats.bpb_to_nats(opts.reference_bpb, mean_loss, mean_bpb)
        src = (f"--reference-bpb {opts.reference_bpb} (= {ref:.8f} nats by this entry's mean loss/bpb ratio "
               f"{ratio:.6f})")
        return {"reference_source": src, "reference_val_bpb": opts.reference_bpb,
                **stats.record_test(losses, ref_loss=ref)}
    if opts.reference is None:
        return None
    p = Path(opts.reference)
    ref = reference_scores(p)
    if ref["bpbs"] or ref["bpb"] is not None:
        # Compare in bpb, converted to nats with this entry's own loss/bpb ratio: right even when
        # the reference used another tokenizer (nats per token are not comparable across vocabularies).
        bpbs = ref["bpbs"] or [ref["bpb"]]
        src = (f"{ref['source']}: val_bpb {'per seed' if ref['bpbs'] else 'mean'} converted to nats by this "
               f"entry's loss/bpb ratio {ratio:.6f}")
        if ref["losses"] and ref["bpbs"]:
            theirs = stats.mean(ref["losses"]) / stats.mean(ref["bpbs"])
            if abs(theirs / ratio - 1) > 1e-4:
                src += f" (the reference's own ratio is {theirs:.6f}: another tokenizer or validation set)"
        return {"reference_source": src, "reference_val_bpb": _round(stats.mean(bpbs), 8),
                **stats.record_test(losses, ref_losses=[b * ratio for b in bpbs])}
    same = "assumes the same tokenizer and validation set"
    if ref["losses"]:
        return {"reference_source": f"{ref['source']}: per-seed val_loss (no bpb given; {same})",
                **stats.record_test(losses, ref_losses=ref["losses"])}
    if ref["loss"] is not None:
        return {"reference_source": f"{ref['source']}: val_loss (no bpb given; {same})",
                **stats.record_test(losses, ref_loss=ref["loss"])}
    raise Refusal(f"--reference {p}: no score found (no scored logs, val_bpb or val_loss)")


def counted_form(script: Path, source: bytes, form: str, run: RunLog) -> bytes:
    """The code a run counted under CODE_FORM (wrapped, minified), made by the script's own shipped_code(); it must
    hash to the counted_sha256 of the run's log."""
    try:
        shipped = load_script(script).shipped_code(source, form)
    except Exception as exc:  # noqa: BLE001 - a script that cannot make its form is one refusal line
        raise Refusal(f"{script}: cannot make the CODE_FORM={form} code ({type(exc).__name__}: {exc})") from None
    logged = re.search(r"counted_sha256:([0-9a-f]{64})", run.text_path.read_text(errors="replace"))
    if logged is None or logged.group(1) != sha256_bytes(shipped):
        raise Refusal(f"{run.name}: the CODE_FORM={form} code made now does not hash to the log's counted_sha256")
    return shipped


def _code(opts: PackOptions, script: Path, runs: list[RunLog]) -> tuple[bytes, bytes | None]:
    """(the readable source that ran, its self-extracting wrapper with --wrap else None)."""
    source = script.read_bytes()
    sha = sha256_bytes(source)
    if sha != runs[0].code_sha256:
        raise Refusal(f"{script} (sha256 {sha[:12]}...) is not the script that ran "
                      f"(logs: code_sha256 {runs[0].code_sha256[:12]}...)")
    form = str(runs[0].config.get("CODE_FORM", "raw"))
    if form != "raw":  # the run counted its code in this form: ship exactly that
        return source, counted_form(script, source, form, runs[0])
    if not opts.wrap:
        return source, None
    if decode_wrapper(source) is not None:
        raise Refusal(f"--wrap: {script} is already a self-extracting wrapper")
    try:
        return source, make_wrapper(source)
    except WrapError as exc:
        raise Refusal(f"--wrap: {exc}") from None


def _audit(opts: PackOptions, script: Path, config: dict) -> Audit:
    """The compliance auditor's verdict on the script under the run's settings; refuses a live violation."""
    if opts.skip_audit:
        return Audit("not-run", [], ran=False, note="skipped with --skip-audit")
    audit = run_audit(script, config, opts.auditor or compliance_audit)
    if audit.verdict == "error":
        raise Refusal(f"compliance auditor failed: {audit.note}")
    if audit.verdict == "incomplete":  # the auditor could not read all of the code: never packed as if clean
        missed = "; ".join(str(x) for x in (audit.raw or {}).get("incomplete", [])[:2]) or "see its report"
        raise Refusal(f"compliance auditor could not analyse all of {script.name} (verdict incomplete: {missed}); "
                      "run `python -m compliance audit` on it")
    active = audit.active(config)
    if active:
        more = f" (and {len(active) - 1} more)" if len(active) > 1 else ""
        raise Refusal(f"compliance auditor reports an active violation: {describe_finding(active[0])}{more}")
    return audit


def _summary(runs: list[RunLog]) -> dict:
    bpbs = [r.final.val_bpb for r in runs]
    losses = [r.final.val_loss for r in runs]
    return {"n": len(runs), "val_bpb_mean": stats.mean(bpbs), "val_bpb_std": stats.sample_std(bpbs),
            "val_loss_mean": stats.mean(losses), "val_loss_std": stats.sample_std(losses), "losses": losses}


def pack(opts: PackOptions) -> PackResult:
    date = check_arguments(opts)
    runs = load_runs(opts.runs)
    validate_runs(runs)
    runs.sort(key=lambda r: r.seed)

    script = Path(opts.script)
    source, wrapper = _code(opts, script, runs)
    code_submitted = wrapper if wrapper is not None else source
    bytes_code = len(code_submitted)

    per_seed_total = {r.seed: model_bytes(r) + bytes_code for r in runs}
    for r in runs:  # the submitted artifact: the run's model + the code that is submitted
        if per_seed_total[r.seed] > ARTIFACT_LIMIT_BYTES:
            raise Refusal(f"{r.name}: artifact {per_seed_total[r.seed]:,} bytes is over the "
                          f"{ARTIFACT_LIMIT_BYTES:,}-byte limit")

    # Statistics (before the audit: a bad reference refuses quickly).
    summ = _summary(runs)
    reference = _reference(opts, summ["losses"], summ["val_loss_mean"], summ["val_bpb_mean"])

    track, not_record = decide_track(runs)
    dest = Path(opts.out_root) / track / f"{date.isoformat()}_{slug(opts.name)}"
    if dest.exists() and not opts.force:
        raise Refusal(f"{dest} already exists (use --force to replace it)")

    config = runs[0].config
    audit = _audit(opts, script, config)

    defaults, defaults_how, meanings = F.script_defaults(script)
    if defaults is None:
        defaults_note = f"{defaults_how}; no default is known, so every setting is listed"
        defaults = {}
    else:
        defaults_note = f"defaults read from {defaults_how}"
    changes = F.non_default(config, defaults)
    technique = F.technique_summary(changes)

    req_path = _find_requirements(opts, script)

    seed_results = {}
    for r in runs:
        seed_results[str(r.seed)] = {
            "val_bpb": _round(r.final.val_bpb), "val_loss": _round(r.final.val_loss),
            "artifact_bytes": r.artifact_bytes, "steps": r.steps,
            "step_avg_ms": _round(r.step_avg_ms, 2),
            "pre_quant_val_bpb": _round(r.pre_quant.val_bpb) if r.pre_quant else None,
            "train_time_seconds": _round(r.train_time_s, 3), "eval_time_seconds": _round(r.eval_time_s, 3),
        }
    pre = [r.pre_quant.val_bpb for r in runs if r.pre_quant]
    evals = [r.eval_time_s for r in runs if r.eval_time_s is not None]
    trains = [r.train_time_s for r in runs if r.train_time_s is not None]
    comp = {
        "train_under_600s": all(train_within_limit(t) for t in trains) if len(trains) == len(runs) else None,
        "artifact_under_16mb": all(v <= ARTIFACT_LIMIT_BYTES for v in per_seed_total.values()),
        "eval_under_600s": all(eval_within_limit(t) for t in evals) if len(evals) == len(runs) else None,
    }
    cf = audit.compliance_fields(config)
    comp.update({"no_slot": cf["no_slot"], "no_pre_quant_ttt": cf["no_pre_quant_ttt"],
                 "no_ngram_cache": cf["no_ngram_cache"], "score_first_ttt": cf["score_first_ttt"],
                 "three_seeds": len(runs) >= 3, "auditor_verdict": audit.verdict})
    blurb = opts.blurb or (
        f"{technique}. {len(runs)}-seed mean val_bpb {summ['val_bpb_mean']:.5f}"
        + (f" (std {summ['val_bpb_std']:.5f})" if summ["val_bpb_std"] is not None else "") + "."
    )
    top = Path(opts.top_json) if opts.top_json else None
    rel_base = top.resolve().parent if top else Path.cwd()
    try:
        record_path = Path(os.path.relpath(dest.resolve(), rel_base)).as_posix()
    except ValueError:
        record_path = dest.resolve().as_posix()
    submission = {
        "author": opts.author,
        "github_id": opts.github_id,
        "name": opts.name,
        "blurb": blurb,
        "date": date.isoformat(),
        "val_loss": _round(summ["val_loss_mean"]),
        "val_bpb": _round(summ["val_bpb_mean"]),
        "bytes_total": max(per_seed_total.values()),
        "bytes_code": bytes_code,
        "track": track,
        "seeds": [r.seed for r in runs],
        "seed_results": seed_results,
        "val_bpb_std": _round(summ["val_bpb_std"]),
        "val_loss_std": _round(summ["val_loss_std"]),
        "val_loss_mean_nats": _round(summ["val_loss_mean"]),
        "hardware": _hardware(runs),
        "pytorch_version": runs[0].torch_version,
        "pre_quant_val_bpb": _round(stats.mean(pre)) if len(pre) == len(runs) else None,
        "eval_time_seconds": _round(max(evals), 3) if evals else None,
        "train_time_seconds": _round(max(trains), 3) if trains else None,
        "technique_summary": technique,
        "compliance": comp,
        "code_sha256": sha256_bytes(code_submitted),
        "wrapped": wrapper is not None,
        "record_path": record_path,
    }
    if reference is not None:
        submission["reference"] = {k: ((_round(v, 10) if math.isfinite(v) else None) if isinstance(v, float) else v)
                                   for k, v in reference.items() if k != "description"}

    ctx = dict(opts=opts, runs=runs, summ=summ, track=track, not_record=not_record, audit=audit, config=config,
               changes=changes, defaults_note=defaults_note, technique=technique, reference=reference,
               source=source, wrapper=wrapper, submission=submission, dest=dest, req_path=req_path,
               per_seed_total=per_seed_total, script=script, meanings=meanings)
    readme = render_readme(ctx)

    files: dict[str, bytes] = {
        "README.md": readme.encode("utf-8"),
        "submission.json": (json.dumps(submission, indent=2) + "\n").encode("utf-8"),
    }
    for r in runs:
        files[f"train_seed{r.seed}.log"] = r.text_path.read_bytes()
    if wrapper is not None:
        files["train_gpt.py"] = wrapper
        files["train_gpt_human.py"] = source
    else:
        files["train_gpt.py"] = source
    if req_path is not None:
        files["requirements.txt"] = req_path.read_bytes()

    _write_folder(dest, files, force=opts.force)
    if top is not None:
        write_atomic(top, files["submission.json"])
    return PackResult(dest, track, submission, readme)


def _find_requirements(opts: PackOptions, script: Path) -> Path | None:
    if opts.requirements:
        return Path(opts.requirements)
    for d in (script.resolve().parent, Path.cwd()):
        p = d / "requirements.txt"
        if p.is_file():
            return p
    return None


def _write_folder(dest: Path, files: dict[str, bytes], force: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=str(dest.parent)))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        if dest.exists():
            if not force:
                raise Refusal(f"{dest} already exists (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=str(dest.parent)))
            os.rmdir(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------
# README


def _yn(v) -> str:
    return {True: "yes", False: "**no**", None: "not determined"}[v]


def _cmd(ctx: dict, seed: int) -> str:
    runs, dest = ctx["runs"], ctx["dest"]
    r0 = runs[0]
    env = [f"SEED={seed}"] + [f"{k}={F.env_value(v)}" for k, v, _ in ctx["changes"] if k != "RUN_ID"]
    script = Path(ctx["submission"]["record_path"]) / "train_gpt.py"
    if r0.device == "cuda":
        launcher = f"torchrun --standalone --nproc_per_node={r0.world_size or 1} {shlex.quote(script.as_posix())}"
    else:
        launcher = f"python {shlex.quote(script.as_posix())}"
    return " ".join(env + [launcher])


def render_readme(ctx: dict) -> str:
    opts, runs, summ, sub = ctx["opts"], ctx["runs"], ctx["summ"], ctx["submission"]
    audit: Audit = ctx["audit"]
    L = []
    std_b = summ["val_bpb_std"]
    L.append(f"# {opts.name}")
    L.append("")
    L.append(f"**val_bpb {summ['val_bpb_mean']:.8f}"
             + (f" ± {std_b:.8f}" if std_b is not None else "") + f"** (mean"
             + (" ± sample std, ddof=1" if std_b is not None else "") + f", {len(runs)} seed{'s' if len(runs) != 1 else ''}) · "
             f"val_loss {summ['val_loss_mean']:.8f} nats · {sub['bytes_total']:,} bytes · `{ctx['track']}`")
    L.append("")
    L.append(f"By {opts.author} (@{opts.github_id}), {sub['date']}.")
    L.append("")
    L.append(sub["blurb"])
    L.append("")
    L.append("## What it does")
    L.append("")
    if ctx["changes"]:
        L.append(f"Settings that differ from the kit's defaults ({ctx['defaults_note']}):")
        L.append("")
        for k, v, d in ctx["changes"]:
            L.append(f"- {F.describe(k, v, d, ctx['meanings'])}")
    else:
        L.append(f"The kit's default configuration, unchanged ({ctx['defaults_note']}).")
    L.append("")
    L.append(f"Technique summary: {ctx['technique']}.")
    L.append("")
    # ---- results
    L.append("## Results")
    L.append("")
    metric = runs[0].final.metric
    L.append(f"Score: the last `final_*_exact` line of each log (`{metric}`), i.e. the model reloaded from its "
             "compressed artifact. Pre-quantisation bpb is `final_float_sliding_window_exact` (diagnostic).")
    L.append("")
    L.append("| seed | val_bpb | val_loss | pre-quant bpb | artifact bytes | steps | ms/step | train s | eval s |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        L.append(
            f"| {r.seed} | {r.final.val_bpb:.8f} | {r.final.val_loss:.8f} | "
            f"{(f'{r.pre_quant.val_bpb:.8f}' if r.pre_quant else 'n/a')} | {r.artifact_bytes:,} | "
            f"{r.steps if r.steps is not None else 'n/a'} | "
            f"{(f'{r.step_avg_ms:.2f}' if r.step_avg_ms is not None else 'n/a')} | "
            f"{(f'{r.train_time_s:.1f}' if r.train_time_s is not None else 'n/a')} | "
            f"{(f'{r.eval_time_s:.1f}' if r.eval_time_s is not None else 'n/a')} |"
        )
    std_l = summ["val_loss_std"]
    L.append(f"| **mean** | **{summ['val_bpb_mean']:.8f}** | **{summ['val_loss_mean']:.8f}** | "
             f"{(f'{stats.mean([r.pre_quant.val_bpb for r in runs]):.8f}' if all(r.pre_quant for r in runs) else 'n/a')}"
             " | | | | | |")
    L.append(f"| std (ddof=1) | {(f'{std_b:.8f}' if std_b is not None else 'n/a')} | "
             f"{(f'{std_l:.8f}' if std_l is not None else 'n/a')} | | | | | | |")
    L.append("")
    L.append(f"Hardware: {sub['hardware']}; PyTorch {sub['pytorch_version'] or 'unknown'}; "
             f"attention {runs[0].attention or 'unknown'}, compile {runs[0].compile_mode or 'unknown'}.")
    L.append("")
    # ---- statistics
    L.append("## Statistics")
    L.append("")
    L.append(f"Mean over {len(runs)} seeds: {summ['val_bpb_mean']:.8f} bpb, {summ['val_loss_mean']:.8f} nats; "
             + (f"sample std (ddof=1) {std_b:.8f} bpb, {std_l:.8f} nats." if std_b is not None
                else "one seed, so no standard deviation."))
    L.append("")
    ref = ctx["reference"]
    if ref is None:
        L.append("No reference given (`--reference-bpb`, `--reference-loss` or `--reference`): no record test.")
    else:
        L.append(f"Reference: {ref['reference_source']}; reference mean as compared: "
                 f"{ref['reference_loss']:.8f} nats.")
        L.append("")
        L.append(f"- Improvement: {ref['improvement_nats']:+.8f} nats (reference minus this entry's mean; "
                 f"the bar is {ref['margin_nats']} nats).")
        L.append(f"- Test: {ref['description']}.")
        if ref["p_value"] is None:
            L.append("- p-value: not computable (needs at least two seeds).")
        else:
            t = "undefined (no spread, no difference)" if ref["t"] is None else f"{ref['t']:.4f}"
            L.append(f"- t = {t}, df = {ref['df']:.2f}, p = {ref['p_value']:.3g}.")
        L.append(f"- Meets the record bar (>= {ref['margin_nats']} nats at p < {ref['alpha']}): "
                 f"**{'yes' if ref['meets_record_bar'] else 'no'}**"
                 + ("" if ref["meets_record_bar"] else " (a warning under COMPLIANCE.md's STATS rule, not a refusal)") + ".")
    L.append("")
    # ---- track
    L.append("## Track")
    L.append("")
    if ctx["track"] == RECORD_TRACK:
        L.append(f"`{RECORD_TRACK}`: every seed ran on {RECORD_WORLD_SIZE}x {RECORD_DEVICE}, trained within "
                 f"{TRAIN_LIMIT_S:.0f} s and evaluated within {EVAL_LIMIT_S:.0f} s by its own log "
                 f"(slowest: train {max(r.train_time_s for r in runs):.3f} s, eval {max(r.eval_time_s for r in runs):.1f} s).")
        if any(r.train_time_s > TRAIN_LIMIT_S for r in runs):
            L.append("")
            L.append(f"Note: the wallclock cap stops training at the first step past {TRAIN_LIMIT_S:.0f} s; the last "
                     f"step ended up to {max(r.train_time_s for r in runs) - TRAIN_LIMIT_S:.3f} s past it "
                     f"(allowed up to {TRAIN_CAP_GRACE_S} s, as upstream's accepted records do).")
    else:
        L.append(f"`{NON_RECORD_TRACK}`, because:")
        L.append("")
        for reason in ctx["not_record"]:
            L.append(f"- {reason}")
    L.append("")
    # ---- compliance
    comp = sub["compliance"]
    L.append("## Compliance")
    L.append("")
    if audit.ran:
        L.append(f"Auditor verdict: **{audit.verdict}** (`{audit.note}` on the readable script).")
    else:
        L.append(f"Auditor verdict: **{audit.verdict}**: {audit.note}. The rule-derived fields below are left "
                 "null rather than written by hand.")
    L.append("")
    L.append("| check | result | from |")
    L.append("|---|---|---|")
    L.append(f"| training <= {TRAIN_LIMIT_S:.0f} s | {_yn(comp['train_under_600s'])} | logs |")
    L.append(f"| evaluation <= {EVAL_LIMIT_S:.0f} s | {_yn(comp['eval_under_600s'])} | logs |")
    L.append(f"| artifact <= {ARTIFACT_LIMIT_BYTES:,} bytes | {_yn(comp['artifact_under_16mb'])} | logs + submitted code |")
    for key, label in (("no_slot", "no SLOT"), ("no_pre_quant_ttt", "no pre-quant TTT"),
                       ("no_ngram_cache", "no target-keyed n-gram cache / rescoring"),
                       ("score_first_ttt", "TTT (if any) is score-first")):
        L.append(f"| {label} | {_yn(comp[key])} | auditor |")
    L.append(f"| three seeds | {_yn(comp['three_seeds'])} | logs |")
    L.append("")
    if audit.findings:
        L.append("Auditor findings:")
        L.append("")
        for f in audit.findings:
            L.append(f"- {describe_finding(f)}")
        L.append("")
    # ---- code
    L.append("## Code")
    L.append("")
    src, wr = ctx["source"], ctx["wrapper"]
    if wr is None:
        L.append(f"`train_gpt.py`: {len(src):,} bytes, sha256 `{sha256_bytes(src)}`: byte-identical to the script "
                 "that produced every log here (each log's `code_sha256` matches).")
    else:
        held = "" if decode_wrapper(wr) == src else " minified (python-minifier, CODE_FORM=minified), then"
        L.append(f"`train_gpt.py` is a self-extracting wrapper: {len(wr):,} bytes (sha256 `{sha256_bytes(wr)}`), "
                 f"holding `train_gpt_human.py` ({len(src):,} bytes, sha256 `{sha256_bytes(src)}`){held} as raw "
                 "LZMA2 + base85. `bytes_code` is the wrapper's size.")
        L.append("")
        L.append("The logs were produced by the readable script and report its sha256. Running the wrapper executes "
                 "that source in the wrapper's own module namespace: `__name__` is `\"__main__\"` when run (the "
                 "module name when imported), `__file__` is the wrapper's path, and the source is registered in "
                 "`linecache` so tracebacks and `inspect.getsource` work. Because the kit's script hashes its own "
                 "file (`Path(__file__).read_bytes()`), a run started from the wrapper reports the wrapper's "
                 f"sha256 and `code_bytes:{len(wr)}`, i.e. the bytes that are submitted. "
                 f"Artifact per seed with the wrapper: "
                 + ", ".join(f"seed {s}: {b:,}" for s, b in ctx["per_seed_total"].items()) + " bytes.")
    L.append("")
    if ctx["req_path"] is not None:
        L.append("`requirements.txt`: the kit's pinned requirements.")
    else:
        L.append("No requirements.txt was found beside the script or in the working directory.")
    L.append("")
    # ---- reproduce
    L.append("## Reproduce")
    L.append("")
    L.append("From the repository root, with the data prepared (`python -m data.prepare`), one command per seed "
             "(non-default settings as environment variables):")
    L.append("")
    L.append("```bash")
    for r in runs:
        L.append(_cmd(ctx, r.seed))
    L.append("```")
    L.append("")
    L.append("Logs: " + ", ".join(f"`train_seed{r.seed}.log` (run `{r.run_id or '?'}`)" for r in runs) + ".")
    L.append("")
    return "\n".join(L)
