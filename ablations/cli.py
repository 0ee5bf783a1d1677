"""Command line: `python -m ablations run GRID.toml`, `python -m ablations report RESULTS.csv` and
`python -m ablations match KEY=VAL ...` (parameter-matched widths for a Review configuration)."""

from __future__ import annotations

import argparse
import os
import sys

from ablations.grid import GridError
from kitlib.cli import ArgumentParser
from kitlib.stats import RECORD_ALPHA, RECORD_MARGIN_NATS


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="python -m ablations", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=ArgumentParser)

    r = sub.add_parser("run", help="run (or resume) every group x configuration x seed of a grid")
    r.add_argument("grid", help="grid TOML file (see ablations/grids/)")
    r.add_argument("--out", default=None, help="output directory (default runs/<grid name>)")
    r.add_argument("--script", default="train_gpt.py", help="training script (default train_gpt.py)")
    r.add_argument("--python", default=None, help="Python interpreter for the runs (default: this one)")
    r.add_argument("--dry-run", action="store_true", help="print the runs (and matched widths) and exit")
    r.add_argument("--force", action="store_true",
                   help="continue in an output directory that holds a different grid")
    r.add_argument("--allow-unknown-settings", action="store_true",
                   help="run even if the grid sets env names the training script does not read")
    r.add_argument("--max-runs", type=int, default=None, help="run at most N pending runs, then stop")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="end a run that takes longer than this (counts as failed; rerun later)")
    r.add_argument("-v", "--verbose", action="store_true", help="echo every line of the runs' output")

    p = sub.add_parser("report", help="seed-table statistics from a results CSV")
    p.add_argument("csv", help="results CSV (ours, or any with configuration, seed and metric columns)")
    p.add_argument("--metric", default="val_bpb", help="metric column (default val_bpb)")
    p.add_argument("--control", default=None, help="control configuration (default 'control', else the first)")
    p.add_argument("--group", default=None, metavar="COLUMN",
                   help="group column (default 'group' when the CSV has a non-empty one)")
    p.add_argument("--config-column", default="config", metavar="NAME", help="configuration column (default config)")
    p.add_argument("--seed-column", default="seed", metavar="NAME", help="seed column (default seed)")
    p.add_argument("--record-test", action="store_true",
                   help=f"add the record test: one-sided Welch on val_loss, {RECORD_MARGIN_NATS}-nat margin, "
                        f"p < {RECORD_ALPHA}")
    p.add_argument("--record-column", default="val_loss", metavar="NAME",
                   help="loss column in nats for --record-test (default val_loss)")
    p.add_argument("--json", action="store_true", help="print the numbers as a JSON list instead of Markdown")
    p.add_argument("--plot", default=None, metavar="OUT.png",
                   help="also write a plot to this file (.png; .pdf and .svg also work)")
    p.add_argument("--x", default=None, metavar="COLUMN",
                   help="numeric column for the scaling plot's x axis (e.g. num_params; default: the group)")
    m = sub.add_parser("match", help="widths at which HIGHWAY and the plain residual reach Review's parameter count")
    m.add_argument("settings", nargs="*", metavar="KEY=VAL", help="the Review configuration (script defaults else)")
    m.add_argument("--script", default="train_gpt.py", help="training script with count_params (default train_gpt.py)")
    return ap


def cmd_match(a) -> int:
    import json

    from ablations.runner import RunnerError, import_script, param_match

    env = {}
    for item in a.settings:
        if "=" not in item:
            print(f"ablations match: error: {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        env[key] = value
    try:
        print(json.dumps(param_match(import_script(a.script), env), indent=1))
    except RunnerError as e:
        print(f"ablations match: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_run(a) -> int:
    from ablations.runner import RunnerError, run_grid

    try:
        return run_grid(a.grid, out_dir=a.out, script=a.script, dry_run=a.dry_run, force=a.force,
                        verbose=a.verbose, python=a.python, max_runs=a.max_runs,
                        allow_unknown=a.allow_unknown_settings, run_timeout=a.timeout)
    except (GridError, RunnerError) as e:
        print(f"ablations run: error: {e}", file=sys.stderr)
        return 2


def cmd_report(a) -> int:
    from ablations import report

    try:
        if a.plot:  # before any work: a bad path is one line, not a traceback after the table
            report.check_plot_path(a.plot)
        elif a.x is not None:
            raise report.ReportError("--x sets the plot's x axis: give --plot OUT.png too")
        table = report.read_csv(a.csv)
        if a.x is not None and a.x not in table.header:
            raise report.ReportError(f"{table.path}: missing x column {a.x!r}; columns are: {', '.join(table.header)}")
        group = a.group
        if group is None and "group" in table.header and any(r["group"] for r in table.rows):
            group = "group"
        summary = report.summarize(table, metric=a.metric, control=a.control, group_col=group,
                                   config_col=a.config_column, seed_col=a.seed_column,
                                   record_test=a.record_test, record_metric=a.record_column)
        if a.json:
            print(report.to_json(summary))
        else:
            print(report.markdown(summary, record_test=a.record_test), end="")
        if a.plot:
            path = report.plot(summary, table, a.plot, group_col=group, config_col=a.config_column, x_col=a.x)
            print(f"ablations report: plot written to {path}", file=sys.stderr)
    except report.ReportError as e:
        print(f"ablations report: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "run":
            return cmd_run(a)
        if a.cmd == "match":
            return cmd_match(a)
        return cmd_report(a)
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
