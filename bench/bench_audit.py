"""Speed of the static compliance audit (`python -m compliance audit`), and the survey of published records.

    python bench/bench_audit.py synthetic --mb 1 5                 # generated scripts: code-heavy and a data table
    python bench/bench_audit.py synthetic --mb 5 --other /path/to/older/kit   # the same files, another checkout
    python bench/bench_audit.py records /work/ref/parameter-golf/records/track_10min_16mb/* ...

`synthetic` writes scripts of the given sizes (code: blocks of model, eval, training and TTT functions, like a long
entry; table: a legal script plus one list literal of integers) to a temporary folder and audits each in a fresh
process (`python -m compliance audit FILE --json`), printing wall and CPU seconds, peak memory and the verdict.
`--other DIR` audits the same files with the `compliance` package of another checkout (DIR holds `compliance/`),
alternating, for a before/after comparison on the same machine. `records` audits every folder given and prints one
row per folder (verdict, findings, what was not analysed, seconds) and the totals. `--record` appends the figures to
bench/RESULTS.md. Timings on a shared machine vary with its load: compare CPU seconds of runs made together.
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_audit.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

ROOT = common.ROOT

BLOCK = '''
class Stage{i}(nn.Module):
    def __init__(self, dim=512, heads=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.use_gate = bool(int(os.environ.get("USE_GATE_{i}", "0")))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.use_gate:
            y = y * torch.sigmoid(self.scale)
        return x + self.proj(y)


def eval_window_{i}(model, val_tokens, seq_len=1024, stride=64):
    total = val_tokens.numel() - 1
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for ws in range(0, total, stride):
            end = min(ws + seq_len, total)
            chunk = val_tokens[ws:end + 1]
            logits = model(chunk[:-1][None])[0]
            nll = F.cross_entropy(logits.float(), chunk[1:], reduction="none")
            s = 0 if ws == 0 else end - ws - stride
            loss_sum += nll[s:].double().sum()
            count += end - ws - s
    return (loss_sum / count).item()


def train_steps_{i}(model, loader, steps, lr=3e-4):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = loader.next_batch(65536, 1024)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step:{{step}} train_loss:{{loss.item():.4f}}")
    return model


def ttt_chunked_{i}(model, val_tokens, chunk=32768, seq_len=1024):
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    loss_sum, count = 0.0, 0
    n_chunks = (val_tokens.numel() - 1) // chunk
    for ci in range(n_chunks):
        part = val_tokens[ci * chunk:(ci + 1) * chunk + 1]
        n = (part.numel() - 1) // seq_len
        x, y = part[: n * seq_len].view(n, seq_len), part[1: n * seq_len + 1].view(n, seq_len)
        with torch.no_grad():
            nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
        loss_sum += nll.sum().item()
        count += nll.numel()
        if ci < n_chunks - 1:
            opt.zero_grad()
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
    return loss_sum / count
'''

HEAD = '''import os
import math
import torch
import torch.nn.functional as F
from torch import nn


class Hyperparameters:
    ttt_enabled = bool(int(os.environ.get("TTT_ENABLED", "0")))
    steps = int(os.environ.get("STEPS", 1000))
'''


def make_script(lines: int) -> str:
    """A legal entry-like script of about `lines` lines: model blocks, sliding evaluations, a training loop and a
    score-first TTT behind a default-off flag."""
    parts = [HEAD]
    n = 0
    i = 0
    while n < lines - 20:
        parts.append(BLOCK.format(i=i))
        n += parts[-1].count("\n")
        i += 1
    calls = "\n".join(f"    v{k} = eval_window_{k}(model, val_tokens)" for k in range(i))
    parts.append(f"\n\ndef main():\n    args = Hyperparameters()\n    model = torch.load('m.pt')\n"
                 f"    val_tokens = torch.load('val.pt')\n{calls}\n    if args.ttt_enabled:\n"
                 f"        ttt_chunked_0(model, val_tokens)\n\n\nif __name__ == '__main__':\n    main()\n")
    return "".join(parts)


def make_table_script(n_values: int) -> str:
    """A legal script plus one list literal of `n_values` integers (an embedded data table)."""
    return make_script(100) + "\nTABLE = [" + ", ".join(str(i % 997) for i in range(n_values)) + "]\n"


def audit_once(path: Path, root: Path) -> dict:
    """Audit `path` in a fresh process with the compliance package under `root`; wall/CPU seconds and peak RSS of
    that process alone (os.wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "compliance", "audit", str(path), "--json"], cwd=root,
                             stdout=out, stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(root)})
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    try:
        verdict = json.loads(stdout)["verdict"]
    except (ValueError, KeyError):
        verdict = f"exit {p.returncode}: {stderr.strip()[-120:]}"
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
            "verdict": verdict, "exit": p.returncode}


def synthetic(args) -> list[str]:
    rows = []
    roots = [("this", ROOT)] + ([("other", Path(args.other).resolve())] if args.other else [])
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        files = []
        for mb in args.mb:
            code = Path(tmp) / f"code_{mb:g}mb.py"
            code.write_text(make_script(int(mb * 1e6 / 38.7)))
            table = Path(tmp) / f"table_{mb:g}mb.py"
            table.write_text(make_table_script(int(mb * 1e6 / 4.9)))
            files += [code, table]
        print(f"{'file':<18} {'MB':>6} {'lines':>8}  {'package':<7} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}  verdict")
        for f in files:
            size = f.stat().st_size / 1e6
            nlines = f.read_text().count("\n")
            for name, root in roots:
                r = audit_once(f, root)
                print(f"{f.name:<18} {size:>6.2f} {nlines:>8}  {name:<7} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
                      f"{r['peak_rss_mb']:>8.0f}  {r['verdict']}", flush=True)
                rows.append(f"{f.name} ({size:.2f} MB, {nlines} lines), {name}: {r['wall_s']:.1f} s wall, "
                            f"{r['cpu_s']:.1f} s CPU, {r['verdict']}")
    return rows


def records(args) -> list[str]:
    from compliance.audit import audit
    rows, total, worst = [], 0.0, (0.0, "")
    counts: dict[str, int] = {}
    for folder in args.folders:
        p = Path(folder)
        t = time.perf_counter()
        rep = audit(p)
        dt = time.perf_counter() - t
        total += dt
        worst = max(worst, (dt, p.name))
        counts[rep.verdict] = counts.get(rep.verdict, 0) + 1
        live = [f"{f.rule}:{f.file}:{f.line}" for f in rep.findings if f.status in ("active", "needs-ruling")]
        print(f"{dt:6.2f}s  {rep.verdict:<12} {p.parent.name[:12]:<12} {p.name[:70]:<70} {' '.join(live)} "
              f"{'; '.join(rep.incomplete)}", flush=True)
    summary = ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
    print(f"\n{len(args.folders)} folders: {summary}; {total:.1f} s in all, slowest {worst[0]:.2f} s ({worst[1]})")
    rows.append(f"{len(args.folders)} folders: {summary}; {total:.1f} s, slowest {worst[0]:.2f} s ({worst[1]})")
    return rows


def main(argv=None) -> int:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=common.ArgumentParser)
    s = sub.add_parser("synthetic", help="generated scripts of the given sizes")
    s.add_argument("--mb", type=float, nargs="+", default=[1.0, 5.0])
    s.add_argument("--other", metavar="DIR", help="a checkout holding another compliance/ package to compare")
    r = sub.add_parser("records", help="audit each record folder")
    r.add_argument("folders", nargs="+")
    for p in (s, r):
        p.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args(argv)
    device = f"CPU: {common.cpu_name()} ({os.cpu_count()} cores)"
    if args.cmd == "synthetic":
        if any(not m > 0 for m in args.mb):
            ap.error("--mb takes positive sizes")
        if args.other and not (Path(args.other) / "compliance").is_dir():
            ap.error(f"--other {args.other} holds no compliance/ package")
    else:
        missing = [f for f in args.folders if not Path(f).is_dir()]
        if missing:
            ap.error(f"not a folder: {missing[0]}")
    if args.record:
        unwritable = common.unwritable(common.RESULTS)
        if unwritable:
            ap.error(f"--record: {unwritable}")
    print(f"device: {device}", flush=True)
    rows = synthetic(args) if args.cmd == "synthetic" else records(args)
    if args.record:
        common.record(common.RESULTS, f"bench_audit {args.cmd}", device, "; ".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
