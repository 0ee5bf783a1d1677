"""Command line: ``python -m compliance audit PATH [--json] [--data DIR] [--reference-bpb X | --reference-loss X]
[--set NAME=VALUE ...]`` and ``python -m compliance probe [--script PATH] [--json] [NAME=VALUE ...]``.

Exit status: 0 clean (probe: all pass), 1 flagged or needs-ruling (probe: a probe failed), 2 usage error or
unreadable input (one line on stderr), 3 audit incomplete (part of the code could not be analysed: the report names
what; never reported as clean)."""

from __future__ import annotations

import argparse
import json
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2
        sys.stderr.write(f"error: {message} (see python -m compliance {self.prog.split()[-1]} --help)\n")
        sys.exit(2)


def _kv(items, what) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it or not it.split("=", 1)[0]:
            raise ValueError(f"{what} {it!r} is not NAME=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m compliance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    a = sub.add_parser("audit", help="static audit of a script or record folder, with its logs")
    a.add_argument("path")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--data", metavar="DIR", help="hash the train/val shards in DIR (no train shard may equal a val shard)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--reference-bpb", type=float, metavar="X", help="standing record's val_bpb (significance test)")
    g.add_argument("--reference-loss", type=float, metavar="X", help="standing record's val_loss in nats")
    a.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="resolve reachability under this setting instead of the defaults (repeatable)")
    a.add_argument("--env", action="store_true",
                   help="also resolve reachability under this process's environment variables (as a run saw them)")
    a.add_argument("--time-budget", type=float, default=300.0, metavar="SECONDS",
                   help="stop the analysis after this long; what was not analysed makes the verdict incomplete "
                        "(default 300)")
    pr = sub.add_parser("probe", help="dynamic probes of the kit's scoring functions on a tiny CPU model")
    pr.add_argument("--script", help="train_gpt.py to import (default: ./train_gpt.py, else /work/main/train_gpt.py)")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--tokens", type=int, default=96, help="length of the random token stream (default 96)")
    pr.add_argument("--seq-len", type=int, default=32)
    pr.add_argument("--stride", type=int, default=8)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("env", nargs="*", metavar="NAME=VALUE", help="settings for Hyperparameters.from_env (win over the tiny defaults)")
    from .runcli import add_parser as _add_run
    _add_run(sub)
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help(sys.stderr)
        return 2
    if args.cmd == "audit":
        return _audit(args)
    if args.cmd == "run":
        from .runcli import main as _run
        return _run(args)
    return _probe(args)


def _audit(args) -> int:
    from .audit import audit
    from .source import InputError
    try:
        settings = _kv(args.set, "--set")
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.env:
        import os
        settings = {**{k: v for k, v in os.environ.items() if k.isupper()}, **settings}
    if not args.time_budget > 0:
        sys.stderr.write(f"error: --time-budget must be a positive number of seconds, not {args.time_budget}\n")
        return 2
    try:
        report = audit(args.path, data_dir=args.data, reference_bpb=args.reference_bpb,
                       reference_loss=args.reference_loss, settings=settings or None, time_budget=args.time_budget)
    except InputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _emit(report.to_json() if args.json else report.to_text())
    return report.exit_code()


def _probe(args) -> int:
    from .probe import ProbeError, run_probes
    try:
        env = _kv(args.env, "setting")
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        result = run_probes(script=args.script, env=env, n_tokens=args.tokens, seq_len=args.seq_len,
                            stride=args.stride, seed=args.seed)
    except ProbeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _emit(json.dumps(result, indent=1) if args.json else _probe_text(result))
    return 0 if result["verdict"] == "pass" else 1


def _emit(text: str) -> None:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:   # e.g. piped into `head`: the reader went away, nothing left to say
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _probe_text(result: dict) -> str:
    out = [f"compliance probes: {result['script']}", f"verdict: {result['verdict'].upper()}",
           f"settings: {' '.join(f'{k}={v}' for k, v in result['env'].items())}", ""]
    w = max((len(r["probe"]) for r in result["probes"]), default=10)
    for r in result["probes"]:
        out.append(f"  {r['probe']:<{w}}  {r['status']:<5}  {r['detail']}")
    return "\n".join(out)
