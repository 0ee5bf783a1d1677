"""Command line: ``python -m records pack ...`` and ``python -m records check PATH``."""

from __future__ import annotations

import argparse
import json
import sys

from kitlib.cli import ArgumentParser
from kitlib.stats import RECORD_ALPHA, RECORD_MARGIN_NATS

from .check import check_path
from .pack import PackOptions, Refusal, UsageError, pack


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m records", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

    p = sub.add_parser("pack", help="turn finished runs into a record folder",
                       description="Pack finished runs (logs/<id>.json or logs/<id>.txt; usually 3 seeds of one "
                                   "configuration) into records/<track>/YYYY-MM-DD_<Name>/ and ./submission.json. "
                                   "Exit 0 written, 1 refused (the entry is not submittable), 2 bad argument; "
                                   "a refusal or a bad argument writes nothing.")
    p.add_argument("runs", nargs="+", metavar="RUN_JSON_OR_LOG")
    p.add_argument("--name", required=True, help="entry name (folder: YYYY-MM-DD_<Name>)")
    p.add_argument("--author", required=True)
    p.add_argument("--github-id", required=True)
    p.add_argument("--blurb", help="one-paragraph description (default: generated from the settings)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--wrap", action="store_true",
                   help="write train_gpt.py as an lzma+base85 self-extracting wrapper; keep train_gpt_human.py")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference-bpb", type=float, metavar="X", help="standing record's val_bpb")
    ref.add_argument("--reference-loss", type=float, metavar="X", help="standing record's val_loss (nats)")
    ref.add_argument("--reference", metavar="RECORD_DIR", help="standing record's folder (per-seed logs) or submission.json")
    p.add_argument("--script", default="train_gpt.py", help="the script that ran (default ./train_gpt.py)")
    p.add_argument("--out-root", default="records", help="where the track folders live (default ./records)")
    p.add_argument("--top-json", default="submission.json",
                   help="also write this copy of submission.json (default ./submission.json; '' to skip)")
    p.add_argument("--requirements", help="requirements file to copy (default: requirements.txt beside the script, "
                                          "else in the working directory)")
    p.add_argument("--force", action="store_true", help="replace an existing folder of the same name")
    p.add_argument("--skip-audit", action="store_true",
                   help="do not run the compliance auditor (auditor_verdict becomes 'not-run')")

    d = sub.add_parser("demo", help="summarise a finished demo run, pack it as a non-record entry and check it",
                       description="Prints the run's scores beside the unigram reference, packs it under "
                                   "records/track_non_record_16mb/ (replacing an earlier demo) and checks the folder.")
    d.add_argument("run", metavar="RUN_JSON")
    d.add_argument("--name", default="CpuDemo")

    c = sub.add_parser("check", help="validate a record folder or a submission.json",
                       description="Exit 0 consistent, 1 findings, 2 unreadable.")
    c.add_argument("path")
    c.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return ap


DEMO_KEYS = {"final": dict, "steps": int, "train_time_ms": (int, float), "world_size": int, "device": str,
             "num_params": int, "artifact_bytes": int, "code_bytes": int, "model_bytes": int}


def _demo_run(run_json: str) -> dict:
    """The finished training run's JSON, or UsageError saying why it is not one."""
    try:
        run = json.loads(open(run_json, encoding="utf-8").read())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {run_json}: {exc}") from None
    if not isinstance(run, dict):
        raise UsageError(f"{run_json} holds a JSON {type(run).__name__}, not a run's logs/<RUN_ID>.json object")
    cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
    if cfg.get("EVAL_ONLY"):
        raise UsageError(f"{run_json} is an EVAL_ONLY run (it scored {cfg['EVAL_ONLY']}); give the JSON of the run "
                         "that trained the model")
    if run.get("status") != "complete":
        raise UsageError(f"{run_json}: status is {run.get('status')!r}, not 'complete' (an unfinished run)")
    bad = [k for k, t in DEMO_KEYS.items() if not isinstance(run.get(k), t) or isinstance(run.get(k), bool)]
    final = run.get("final") if isinstance(run.get("final"), dict) else {}
    if not bad and not all(isinstance(final.get(k), (int, float)) for k in ("val_bpb", "val_loss")):
        bad = ["final.val_bpb"]
    if bad:
        raise UsageError(f"{run_json} is not a finished training run's JSON (missing or wrong: {', '.join(bad)})")
    return run


def demo(run_json: str, name: str) -> int:
    """The README main job's last step: show that the model learned, pack the run, check the folder."""
    run = _demo_run(run_json)
    final, uni = run["final"], run.get("unigram_val_bpb")
    print(f"demo: {run['steps']} steps in {run['train_time_ms'] / 1000:.1f} s on {run['world_size']} {run['device']} "
          f"process(es); {run['num_params']:,} parameters")
    if isinstance(uni, (int, float)):
        print(f"demo: roundtrip val_bpb {final['val_bpb']:.4f} ({final.get('line', '?')}) vs unigram {uni:.4f}: "
              f"{'learned' if final['val_bpb'] < uni - 0.3 else 'NOT clearly below the unigram model'}")
    else:
        print(f"demo: roundtrip val_bpb {final['val_bpb']:.4f} ({final.get('line', '?')}); no unigram reference")
    print(f"demo: artifact {run['artifact_bytes']:,} bytes = code {run['code_bytes']:,} + model {run['model_bytes']:,}"
          f" (limit 16,000,000)")
    result = pack(PackOptions(runs=[run_json], name=name, author="kit demo", github_id="kit-demo",
                              blurb="CPU demo of the kit on the embedded corpus (not FineWeb).", date=None,
                              wrap=False, reference_bpb=None, reference_loss=None, reference=None,
                              script="train_gpt.py", out_root="records", top_json=None, requirements=None,
                              force=True, skip_audit=False))
    res = check_path(result.folder)
    print(f"demo: packed {result.folder} ({result.track}); check: {res.verdict}")
    return res.exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"records {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except Refusal as exc:
        print(f"records {args.cmd}: refused: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.cmd == "demo":
        return demo(args.run, args.name)
    if args.cmd == "check":
        res = check_path(args.path)
        if args.json:
            print(json.dumps(res.as_dict(), indent=2, default=str))
        else:
            print(res.text())
        return res.exit_code
    opts = PackOptions(
        runs=args.runs, name=args.name, author=args.author, github_id=args.github_id, blurb=args.blurb,
        date=args.date, wrap=args.wrap, reference_bpb=args.reference_bpb, reference_loss=args.reference_loss,
        reference=args.reference, script=args.script, out_root=args.out_root, top_json=args.top_json or None,
        requirements=args.requirements, force=args.force, skip_audit=args.skip_audit,
    )
    result = pack(opts)
    s = result.submission
    std = s.get("val_bpb_std")
    print(f"wrote {result.folder} ({result.track}): val_bpb {s['val_bpb']:.8f}"
          + (f" ± {std:.8f}" if std is not None else "") + f" over {len(s['seeds'])} seed(s), "
          f"{s['bytes_total']:,} bytes, auditor {s['compliance']['auditor_verdict']}")
    if opts.top_json:
        print(f"wrote {opts.top_json}")
    ref = s.get("reference")
    if ref:
        print(f"vs reference: {ref['improvement_nats']:+.6f} nats, p = {ref['p_value']}"
              f" ({'meets' if ref['meets_record_bar'] else 'does not meet'} the {RECORD_MARGIN_NATS}-nat / "
              f"p<{RECORD_ALPHA} bar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
