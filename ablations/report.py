"""Seed-table reports from any results CSV (configuration, seed and metric columns).

Per group and configuration: n, mean, std (ddof=1), delta to the control, Welch's t-test
(t, Welch–Satterthwaite df, two-sided p), a paired t-test when the seeds match the control's,
and optionally the challenge's record test (``kitlib.stats.record_test``: the configuration's
per-seed val_loss against the control's, one-sided Welch, margin and alpha from kitlib.stats).
The statistics are kitlib.stats'.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from kitlib import stats
from kitlib.fileio import unwritable

DEFAULT_CONTROL = "control"


class ReportError(ValueError):
    """Bad input for a report; the message is one line for the user (exit status 2)."""


@dataclass
class Table:
    header: list[str]
    rows: list[dict[str, str]]
    path: str


def read_csv(path: str | Path) -> Table:
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"results file not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise ReportError(f"{p}: bad CSV: empty file or no header row")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise ReportError(f"{p}: bad CSV: duplicate column names in the header")
            reader.fieldnames = header
            rows = []
            for i, r in enumerate(reader, start=2):
                if None in r:
                    raise ReportError(f"{p}: bad CSV: line {i} has more fields than the header")
                rows.append({k: (v.strip() if isinstance(v, str) else "") for k, v in r.items()})
    except UnicodeDecodeError:
        raise ReportError(f"{p}: bad CSV: not UTF-8 text") from None
    except csv.Error as e:
        raise ReportError(f"{p}: bad CSV: {e}") from None
    return Table(header=header, rows=rows, path=str(p))


def _need(table: Table, col: str, what: str) -> None:
    if col not in table.header:
        raise ReportError(f"{table.path}: missing {what} column {col!r}; columns are: {', '.join(table.header)}")


def _num(table: Table, row_index: int, col: str, s: str) -> float | None:
    if s == "":
        return None
    try:
        x = float(s)
    except ValueError:
        raise ReportError(f"{table.path}: bad CSV: row {row_index + 2} column {col!r}: {s!r} is not a number") from None
    return x if math.isfinite(x) else None


def duplicates(table: Table, group_col: str | None, config_col: str,
               seed_col: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(indices of rows that repeat an earlier row exactly, pairs of row indices that share a (group,
    configuration, seed) but differ). Rows with an empty seed are not compared."""
    seen: dict[tuple[str, str, str], int] = {}
    repeats, clashes = [], []
    for i, r in enumerate(table.rows):
        seed = r[seed_col]
        if seed == "":
            continue
        key = (r[group_col] if group_col else "", r[config_col], seed)
        if key not in seen:
            seen[key] = i
        elif table.rows[seen[key]] == r:
            repeats.append(i)
        else:
            clashes.append((seen[key], i))
    return repeats, clashes


def _lines(idx: list[int]) -> str:
    return ", ".join(str(i + 2) for i in idx[:5]) + (" ..." if len(idx) > 5 else "")


def collect(table: Table, metric: str, group_col: str | None, config_col: str, seed_col: str,
            skip: frozenset = frozenset()):
    """{(group, config): [(seed, value), ...]} in first-appearance order, plus skipped count; rows in ``skip``
    (exact repeats) are left out."""
    cells: dict[tuple[str, str], list[tuple[str, float]]] = {}
    skipped = 0
    for i, r in enumerate(table.rows):
        if i in skip:
            continue
        v = _num(table, i, metric, r[metric])
        cfg = r[config_col]
        if cfg == "":
            raise ReportError(f"{table.path}: bad CSV: row {i + 2} has an empty {config_col!r}")
        g = r[group_col] if group_col else ""
        key = (g, cfg)
        cells.setdefault(key, [])
        if v is None:
            skipped += 1
            continue
        cells[key].append((r[seed_col], v))
    return cells, skipped


def summarize(table: Table, metric: str = "val_bpb", control: str | None = None, group_col: str | None = None,
              config_col: str = "config", seed_col: str = "seed", record_test: bool = False,
              record_metric: str = "val_loss", warn=None) -> list[dict]:
    """The report's numbers: one dict per (group, configuration), control first in each group."""
    warn = warn or (lambda msg: print(f"ablations report: warning: {msg}", file=sys.stderr))
    _need(table, config_col, "configuration")
    _need(table, seed_col, "seed")
    _need(table, metric, "metric")
    if group_col is not None:
        _need(table, group_col, "group")
    if record_test:
        _need(table, record_metric, "record-test (val_loss in nats)")
    if not table.rows:
        raise ReportError(f"{table.path}: bad CSV: no data rows")

    repeats, clashes = duplicates(table, group_col, config_col, seed_col)
    if repeats:
        warn(f"{len(repeats)} row(s) repeat an earlier row exactly (line(s) {_lines(repeats)}): each counted once")
    if clashes:
        a, b = clashes[0]
        warn(f"{len(clashes)} row(s) share a {config_col} and {seed_col} with an earlier row but differ (e.g. lines "
             f"{a + 2} and {b + 2}): all counted; if they belong to different groups, give --group COLUMN")
    skip = frozenset(repeats)
    cells, skipped = collect(table, metric, group_col, config_col, seed_col, skip)
    rec_cells = collect(table, record_metric, group_col, config_col, seed_col, skip)[0] if record_test else {}

    configs = list(dict.fromkeys(c for _, c in cells))
    groups = list(dict.fromkeys(g for g, _ in cells))
    if control is None:
        control = DEFAULT_CONTROL if DEFAULT_CONTROL in configs else configs[0]
    elif control not in configs:
        raise ReportError(f"unknown control {control!r}; configurations are: {', '.join(configs)}")
    if skipped:
        warn(f"{skipped} row(s) with an empty or non-finite {metric!r} were skipped")

    out = []
    for g in groups:
        names = [c for c in configs if (g, c) in cells]
        if control not in names:
            warn(f"group {g!r} has no {control!r} rows; its deltas and tests are left empty")
        ctrl = [v for _, v in cells.get((g, control), [])]
        ctrl_seeds = dict(cells.get((g, control), []))
        ctrl_unique = len(ctrl_seeds) == len(ctrl)
        cn, cm, cs = stats.mean_std(ctrl)
        for c in sorted(names, key=lambda c: c != control):
            vals = [v for _, v in cells[(g, c)]]
            seeds = dict(cells[(g, c)])
            n, m, s = stats.mean_std(vals)
            row = {"group": g if group_col else None, "config": c, "control": control, "metric": metric,
                   "n": n, "mean": m, "std": s, "control_n": cn, "control_mean": cm, "control_std": cs,
                   "delta": None, "welch_t": None, "welch_df": None, "welch_p": None,
                   "paired_t": None, "paired_df": None, "paired_p": None}
            if c != control and cn and n:
                row["delta"] = m - cm
                w = stats.welch(vals, ctrl)
                if w:
                    row.update(welch_t=w["t"], welch_df=w["df"], welch_p=w["p"])
                if ctrl_unique and len(seeds) == len(vals):
                    pr = stats.paired(seeds, ctrl_seeds)
                    if pr:
                        row.update(paired_t=pr["t"], paired_df=pr["df"], paired_p=pr["p"])
            elif c == control and n:
                row["delta"] = 0.0
            if record_test:
                row.update(record_metric=record_metric, record=None)
                rc = [v for _, v in rec_cells.get((g, control), [])]
                rx = [v for _, v in rec_cells.get((g, c), [])]
                if c != control and rc and len(rx) >= 2:
                    row["record"] = stats.record_test(rx, ref_losses=rc)
            out.append(row)
    return out


# ---------------------------------------------------------------- formatting

def _f(x, nd=6) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{nd}f}"


def _signed(x, nd=6) -> str:
    return "-" if x is None else f"{x:+.{nd}f}"


def _p(x) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.2e}"


def markdown(summary: list[dict], record_test: bool = False) -> str:
    if not summary:
        return "(no rows)\n"
    grouped = any(r["group"] is not None for r in summary)
    metric = summary[0]["metric"]
    control = summary[0]["control"]
    cols = (["group"] if grouped else []) + ["config", "n", "mean", "std", "delta", "welch t", "welch df",
                                             "welch p", "paired p"]
    align = (["---"] if grouped else []) + ["---"] + ["---:"] * 8
    if record_test:
        cols += ["record Δ nats", "record p", "record"]
        align += ["---:", "---:", "---"]
    lines = [f"metric: {metric}; control: {control}; std ddof=1; Welch two-sided; paired t-test by seed "
             f"when the seeds match the control's"
             + (f"; record test: one-sided Welch on {summary[0].get('record_metric', 'val_loss')}, "
                f"control - config > {stats.RECORD_MARGIN_NATS} nats at p < {stats.RECORD_ALPHA}"
                if record_test else ""),
             "",
             "| " + " | ".join(cols) + " |",
             "|" + "|".join(align) + "|"]
    for r in summary:
        cells = ([r["group"] or "-"] if grouped else []) + [
            r["config"] + (" (control)" if r["config"] == r["control"] else ""), str(r["n"]), _f(r["mean"]),
            _f(r["std"]), _signed(r["delta"]), _f(r["welch_t"], 3), _f(r["welch_df"], 2), _p(r["welch_p"]),
            _p(r["paired_p"])]
        if record_test:
            rec = r.get("record") or {}
            cells += [_signed(rec.get("improvement_nats")), _p(rec.get("p_value")),
                      "-" if not rec else ("pass" if rec["meets_record_bar"] else "fail")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_safe(x):
    """JSON has no infinity: an infinite t (no spread at all) is written as null, like an undefined one."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def to_json(summary: list[dict]) -> str:
    return json.dumps(_json_safe(summary), indent=2, allow_nan=False)


PLOT_FORMATS = ("png", "pdf", "svg")


def check_plot_path(path: str | Path) -> Path:
    """The --plot path, checked before any work: a file name ending in .png (or .pdf / .svg) that can be written;
    ReportError (one line) otherwise. The plot is written exactly there."""
    p = Path(path)
    if p.is_dir():
        raise ReportError(f"--plot {path} is a folder; give a file name such as {p / 'plot.png'}")
    ext = p.suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        what = f"extension .{ext}" if ext else "no extension"
        raise ReportError(f"--plot {path}: {what}; give a file name ending in "
                          f"{', '.join('.' + e for e in PLOT_FORMATS)} (PNG is the kit's plot format)")
    why = unwritable(p)
    if why:
        raise ReportError(f"--plot {path}: {why}")
    return p


# ---------------------------------------------------------------- plots

def _as_float(s: str) -> float | None:
    try:
        x = float(s)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def plot(summary: list[dict], table: Table, out: str | Path, group_col: str | None = None,
         config_col: str = "config", x_col: str | None = None) -> Path:
    """Bars (mean ± std over seeds, seeds as dots) per configuration; with several groups a second
    panel draws the metric against the group (or the mean of --x, e.g. num_params) per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x_col is not None and x_col not in table.header:
        raise ReportError(f"{table.path}: missing x column {x_col!r}; columns are: {', '.join(table.header)}")
    if not summary:
        raise ReportError("nothing to plot")
    metric = summary[0]["metric"]
    control = summary[0]["control"]
    groups = list(dict.fromkeys(r["group"] or "" for r in summary))
    configs = list(dict.fromkeys(r["config"] for r in summary))
    by = {((r["group"] or ""), r["config"]): r for r in summary}
    points: dict[tuple[str, str], list[float]] = {}
    xs: dict[tuple[str, str], list[float]] = {}
    for row in table.rows:
        key = (row[group_col] if group_col else "", row[config_col])
        v = _as_float(row.get(metric, ""))
        if v is not None:
            points.setdefault(key, []).append(v)
        if x_col:
            xv = _as_float(row.get(x_col, ""))
            if xv is not None:
                xs.setdefault(key, []).append(xv)

    scaling = len(groups) > 1
    fig, axes = plt.subplots(1, 2 if scaling else 1, figsize=(13 if scaling else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    cmap = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(configs))
    lo, hi = math.inf, -math.inf
    for j, c in enumerate(configs):
        gx, means, errs = [], [], []
        for i, g in enumerate(groups):
            r = by.get((g, c))
            if not r or r["mean"] is None:
                continue
            x = i + (j - (len(configs) - 1) / 2) * width
            gx.append(x)
            means.append(r["mean"])
            errs.append(r["std"] or 0.0)
            pts = points.get((g, c), [])
            ax.scatter([x + width * 0.2] * len(pts), pts, s=10, color="black", zorder=3)
            lo = min([lo, r["mean"] - (r["std"] or 0.0)] + pts)
            hi = max([hi, r["mean"] + (r["std"] or 0.0)] + pts)
        ax.bar(gx, means, width=width * 0.9, yerr=errs, capsize=3, color=cmap(j % 10),
               label=c + (" (control)" if c == control else ""), alpha=0.85)
    if math.isfinite(lo):
        pad = max((hi - lo) * 0.15, abs(hi) * 1e-4, 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
    if scaling:
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel(group_col or "group")
    else:
        ax.set_xticks([])
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} per configuration")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)

    if scaling:
        ax2 = axes[0][1]
        group_nums = [_as_float(g) for g in groups]
        numeric_groups = all(v is not None for v in group_nums)
        allx = []
        for j, c in enumerate(configs):
            px, py, pe = [], [], []
            for i, g in enumerate(groups):
                r = by.get((g, c))
                if not r or r["mean"] is None:
                    continue
                if x_col:
                    if not xs.get((g, c)):
                        continue
                    x = sum(xs[(g, c)]) / len(xs[(g, c)])
                elif numeric_groups:
                    x = group_nums[i]
                else:
                    x = i
                px.append(x)
                py.append(r["mean"])
                pe.append(r["std"] or 0.0)
            order = sorted(range(len(px)), key=lambda k: px[k])
            px = [px[k] for k in order]
            py = [py[k] for k in order]
            pe = [pe[k] for k in order]
            allx += px
            ax2.errorbar(px, py, yerr=pe, marker="o", capsize=3, color=cmap(j % 10),
                         label=c + (" (control)" if c == control else ""))
        if x_col or numeric_groups:
            pos = [x for x in allx if x > 0]
            if pos and len(pos) == len(allx) and max(pos) / min(pos) > 4:
                ax2.set_xscale("log")
            ax2.set_xlabel(x_col or group_col or "group")
        else:
            ax2.set_xticks(range(len(groups)), groups)
            ax2.set_xlabel(group_col or "group")
        ax2.set_ylabel(f"{metric} (mean ± std)")
        ax2.set_title(f"{metric} vs {x_col or group_col or 'group'}")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)

    fig.tight_layout()
    out = check_plot_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=120, format=out.suffix.lower().lstrip("."))
    except OSError as e:
        raise ReportError(f"--plot {out}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out
