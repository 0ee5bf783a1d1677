"""One audit: read the entry, analyse it, run the rules, check logs / submission.json / data, decide."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .program import Program
from .datacheck import check_data
from .reachability import Evaluator, FlagTable, Reachability
from .logparse import find_runs
from .logs import check_logs, per_seed_losses, significance
from .report import Report
from .rules import run_rules
from .rules.base import Config, Context
from .source import InputError, load_program


def audit(path: str | Path, data_dir: str | Path | None = None, reference_bpb: float | None = None,
          reference_loss: float | None = None, settings: dict[str, str] | None = None) -> Report:
    path = Path(path)
    loaded = load_program(path)          # raises InputError: exit 2
    report = Report(path=str(path))
    report.files = list(dict.fromkeys(u.display + (f" (decoded {u.decoded})" if u.decoded else "")
                                      for u in loaded.units))
    report.notes.extend(loaded.notes)
    try:
        prog = Program(loaded.units)
        flags = FlagTable(prog)
        base_ev = Evaluator(flags, env=settings or {})
        base = Config("--set" if settings else "defaults", base_ev, Reachability(prog, base_ev))
    except RecursionError:
        report.warnings.append("the code is nested too deeply for the static analysis; static rules not applied")
        prog = Program([])
        flags = FlagTable(prog)
        base_ev = Evaluator(flags, env=settings or {})
        base = Config("defaults", base_ev, Reachability(prog, base_ev))

    logs = find_runs(path) if path.is_dir() else []
    runs = []
    seen_cfg = {}
    for lg in logs:
        env = {k: v for k, v in lg.env.items() if k in flags.by_env}
        attrs = {k: v for k, v in lg.attrs.items() if k in flags.by_attr}
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
    ctx = Context(prog, flags, base, runs)
    report.findings.extend(run_rules(ctx))
    report.warnings.extend(ctx.warnings)

    script = _submitted_script(path, loaded)
    script_bytes = script.stat().st_size if script is not None else None
    if script_bytes is not None:
        # a train_gpt.py that only dispatches to a sibling file: that file's code is submitted code too
        script_bytes += sum(p.stat().st_size for p in loaded.ran_files if p.is_file())
    submission, sub_name = _submission(path)
    if path.is_dir() or logs:
        track = str((submission or {}).get("track", "")) + " " + str(path.resolve())
        non_record = bool(re.search(r"non[_\- ]?record", track, re.I))
        if non_record:
            report.limits["track"] = "non-record"
        report.findings.extend(check_logs(logs, script_bytes, script.name if script else "train_gpt.py", submission,
                                          sub_name, report.limits, report.warnings, non_record=non_record))
    if data_dir is not None:
        d = Path(data_dir)
        if not d.is_dir():
            raise InputError(f"--data {d} is not a folder")
        report.findings.extend(check_data(d, report.limits, report.warnings))
    if reference_bpb is not None or reference_loss is not None:
        losses, bpbs = per_seed_losses(logs, submission)
        info, ws = significance(losses, bpbs, reference_loss, reference_bpb)
        report.limits["stats"] = info
        report.warnings.extend(ws)
    if base.name == "defaults" and runs:
        report.limits["configurations"] = [c.name for c in runs]
    return report


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
