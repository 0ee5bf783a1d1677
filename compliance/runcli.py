"""Command line of the dynamic audit: ``python -m compliance run ENTRY [ENTRY ...] [--json] [--set NAME=VALUE ...]
[--timeout S] [--answers K] [--brief] [--save DIR]``.

``--save DIR`` keeps each entry's JSON report as it ends (a long survey can be read while it runs).

Exit status: 0 every probe of every entry passes; 1 a probe failed; 2 usage error (one line on stderr, nothing run);
4 an entry, or one of its probes, could not run (the report says why)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="dynamic audit: run an entry's own evaluation, sandboxed, at a tiny CPU "
                                   "configuration, and measure causality")
    r.add_argument("entries", nargs="+", metavar="ENTRY", help="a script or a record folder (several: a survey)")
    r.add_argument("--json", action="store_true", help="print one JSON object per entry (a list for several)")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment setting for the entry (wins over the tiny configuration; repeatable)")
    r.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="wall-clock limit for all runs of one entry (default 900)")
    r.add_argument("--answers", type=int, default=6, metavar="K",
                   help="substituted targets at the last position for the self-influence probe (default 6)")
    r.add_argument("--brief", action="store_true", help="one line per entry (for surveys)")
    r.add_argument("--save", metavar="DIR", help="also write each entry's JSON report to DIR/<entry>.json as it ends")
    r.add_argument("--keep", metavar="DIR", help=argparse_hidden())


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def _usage(msg: str) -> int:
    sys.stderr.write(f"error: {msg}\n")
    return 2


def main(args) -> int:
    from .run import RunUsageError, audit, exit_code, resolve_script, to_text
    from .sandbox import Limits

    settings = {}
    for it in args.set:
        if "=" not in it or not it.split("=", 1)[0].strip():
            return _usage(f"--set {it!r} is not NAME=VALUE")
        k, v = it.split("=", 1)
        settings[k.strip()] = v
    if not args.timeout > 0:
        return _usage(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not 1 <= args.answers <= 64:
        return _usage(f"--answers must be between 1 and 64, got {args.answers}")
    for e in args.entries:
        if not Path(e).exists() or len(args.entries) == 1:   # in a survey, a folder without a script is a finding
            try:
                resolve_script(Path(e))
            except RunUsageError as exc:
                return _usage(str(exc))
    limits = Limits(wall_s=args.timeout, cpu_s=int(args.timeout * 2) + 60)
    reports, codes = [], []
    for e in args.entries:
        progress = (lambda m: sys.stderr.write(m + "\n")) if len(args.entries) > 1 else None
        try:
            rep = audit(Path(e), settings, limits, answers=args.answers,
                        keep=Path(args.keep) if args.keep else None, progress=progress)
        except RunUsageError as exc:
            rep = {"entry": e, "script": "", "verdict": "incomplete", "probes": [], "notes": [], "blocked": str(exc)}
        reports.append(rep)
        codes.append(exit_code(rep))
        if args.save:
            from kitlib.fileio import write_json_atomic
            write_json_atomic(Path(args.save) / f"{Path(e).resolve().name.replace(' ', '_')}.json", rep, indent=1)
        if not args.json:
            print(_brief(rep) if args.brief else to_text(rep) + ("\n" if len(args.entries) > 1 else ""), flush=True)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
    elif len(reports) > 1:
        n = len(reports)
        ran = sum(1 for r in reports if not r.get("blocked"))
        print(f"\n{n} entries: {ran} ran, {sum(r['verdict'] == 'pass' for r in reports)} pass, "
              f"{sum(r['verdict'] == 'fail' for r in reports)} fail, "
              f"{sum(r['verdict'] == 'incomplete' for r in reports)} incomplete")
    return 1 if 1 in codes else (4 if 4 in codes else 0)


def _brief(rep: dict) -> str:
    st = " ".join(f"{p['probe'].split(' ')[0]}={p['status']}" for p in rep.get("probes", []))
    why = f" | {rep['blocked']}" if rep.get("blocked") else ""
    return f"{rep['verdict']:<10} {Path(rep['entry']).name[:60]:<60} {st}{why}"
