"""One audit: read the entry, analyse it, run the registered rules over the code, the logs and the data, decide.

The audit fails closed: what could not be analysed (unreadable syntax, a payload it cannot decode, a failed
analysis or rule, the time budget) goes to ``Report.incomplete`` and the verdict cannot be ``clean``."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

from . import budget
from .logparse import find_runs
from .program import Program
from .reachability import Evaluator, FlagTable, Reachability
from .report import Report
from .rules import run_rules
from .rules.base import Config, Context, DataContext, LogContext
from .source import InputError, load_program


def audit(path: str | Path, data_dir: str | Path | None = None, reference_bpb: float | None = None,
          reference_loss: float | None = None, settings: dict[str, str] | None = None,
          time_budget: float | None = budget.DEFAULT_SECONDS) -> Report:
    """Audit a script or record folder; raises InputError (exit 2) when it cannot be audited at all."""
    enabled = gc.isenabled()
    gc.disable()     # millions of short-lived tree nodes and labels: the cycle collector would rescan them often
    try:
        return _audit(Path(path), data_dir, reference_bpb, reference_loss, settings, time_budget)
    finally:
        if enabled:
            gc.enable()


def _audit(path: Path, data_dir, reference_bpb, reference_loss, settings, time_budget) -> Report:
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputError(f"--data {data_dir} is not a folder")
    loaded = load_program(path)          # raises InputError: exit 2
    deadline = budget.start(time_budget)
    report = Report(path=str(path))
    report.files = list(dict.fromkeys(u.display + (f" (decoded {u.decoded})" if u.decoded else "")
                                      for u in loaded.units))
    report.notes.extend(loaded.notes)
    report.incomplete.extend(loaded.incomplete)
    logs = find_runs(path) if path.is_dir() else []
    ctx = _program_context(loaded, logs, settings, report)
    if ctx is not None:
        report.findings.extend(run_rules(ctx, "program", report.incomplete, deadline))
        report.warnings.extend(ctx.warnings)
        if ctx.base.name == "defaults" and ctx.runs:
            report.limits["configurations"] = [c.name for c in ctx.runs]

    script = _submitted_script(path, loaded)
    script_bytes = script.stat().st_size if script is not None else None
    if script_bytes is not None:
        # a train_gpt.py that only dispatches to a sibling file: that file's code is submitted code too
        script_bytes += sum(p.stat().st_size for p in loaded.ran_files if p.is_file())
    submission, sub_name = _submission(path)
    if path.is_dir() or logs:
        track = str((submission or {}).get("track", "")) + " " + str(path.resolve())
        lctx = LogContext(logs, script_bytes, script.name if script else "train_gpt.py", submission, sub_name,
                          bool(re.search(r"non[_\- ]?record", track, re.I)), report.limits,
                          reference_loss, reference_bpb)
    else:
        lctx = LogContext([], None, path.name, None, "", False, report.limits, reference_loss, reference_bpb)
    report.findings.extend(run_rules(lctx, "logs", report.incomplete, deadline))
    report.warnings.extend(lctx.warnings)
    if data_dir is not None:
        dctx = DataContext(Path(data_dir), report.limits)
        report.findings.extend(run_rules(dctx, "data", report.incomplete, deadline))
        report.warnings.extend(dctx.warnings)
    return report


def _program_context(loaded, logs, settings, report: Report) -> Context | None:
    """The analysis of the code and its configurations (defaults or --set, and each logged run's settings); None
    (and an `incomplete` entry) when the analysis itself cannot be completed."""
    try:
        prog = Program(loaded.units)
        flags = FlagTable(prog)
        base_ev = Evaluator(flags, env=settings or {})
        base = Config("--set" if settings else "defaults", base_ev, Reachability(prog, base_ev))
        runs = []
        seen_cfg = {}
        for lg in logs:
            env = {k: v for k, v in lg.env.items() if k in flags.by_env}
            attrs = {k: v for k, v in lg.attrs.items() if k in flags.by_attr}
            for k, v in getattr(lg, "words", {}).items():     # what a run's log says: ngram_cache:enabled
                value = _WORDS.get(v.lower(), v)
                if k in flags.by_attr and k not in attrs:
                    attrs[k] = value
                if k.upper() in flags.by_env and k.upper() not in env:
                    env[k.upper()] = "1" if value is True else "0" if value is False else v
            if not env and not attrs:
                continue
            key = json.dumps([sorted(env.items()), sorted((k, repr(v)) for k, v in attrs.items())])
            if key in seen_cfg:
                seen_cfg[key].name += f", {lg.name}"
                continue
            ev = Evaluator(flags, env={**(settings or {}), **env}, attrs=attrs)
            cfg = Config(lg.name, ev, Reachability(prog, ev))
            seen_cfg[key] = cfg
            runs.append(cfg)
        return Context(prog, flags, base, runs)
    except budget.OutOfTime as exc:
        report.incomplete.append(f"the static analysis of the code did not finish ({exc}); no code rule was checked")
    except Exception as exc:  # noqa: BLE001 - fail closed on anything the analysis cannot handle
        report.incomplete.append(f"the static analysis of the code failed ({type(exc).__name__}: {str(exc)[:160]}); "
                                 "no code rule was checked")
    return None


_WORDS = {"enabled": True, "on": True, "yes": True, "true": True, "disabled": False, "off": False, "no": False,
          "false": False}


def _submitted_script(path: Path, loaded) -> Path | None:
    if path.is_file():
        return path
    if (path / "train_gpt.py").is_file():
        return path / "train_gpt.py"
    return loaded.entry_files[0] if loaded.entry_files else None


def _submission(path: Path) -> tuple[dict | None, str]:
    if not path.is_dir():
        return None, ""
    p = path / "submission.json"
    if not p.is_file():
        return None, ""
    try:
        obj = json.loads(p.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        return {"__path__": str(p), "__error__": str(exc)}, "submission.json"
    if not isinstance(obj, dict):
        return None, "submission.json"
    obj["__path__"] = str(p)
    return obj, "submission.json"
