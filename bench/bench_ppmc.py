"""Throughput of the PPM-C mixer's ppm_target_probs (CPU, numpy).

    python bench/bench_ppmc.py [--tokens N] [--vocab V] [--order K] [--exclusion 0|1] [--reset never|doc]
                               [--shard PATH] [--repeat R] [--script PATH] [--other PATH]

Scores N tokens: a real val shard (uint16 after a 1024-byte header) tiled to N tokens with --shard, else a
synthetic Zipf stream with a BOS every 500-1500 tokens. Prints the seconds, tokens/s and the extrapolation to the
official val set (62,021,632 tokens), and the process's peak resident memory. --script measures the function of
another train_gpt.py (e.g. an older version of the kit); --other alternates a second one with it in every repeat
and prints the ratio of the median times and whether both give the same probabilities. The first run in a process
also pays for touching fresh memory, so compare repeats after the first, or single runs in fresh processes.
Records nothing by itself.
"""
if not __package__:  # run as `python bench/bench_ppmc.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    KIT, OFFICIAL_VAL_TOKENS as VAL_TOKENS, ArgumentParser, BenchError, import_kit, import_other, load_tokens,
)


def stream(n: int, vocab: int, shard: np.ndarray | None, bos: int = 1, seed: int = 0) -> np.ndarray:
    """`shard`'s tokens tiled to n, else a synthetic Zipf stream over ids 2..vocab-1 with a BOS every 500-1500."""
    if shard is not None:
        return np.tile(shard, -(-n // shard.size))[:n]
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab - 1) ** 1.1
    x = rng.choice(np.arange(2, vocab, dtype=np.uint16), size=n, p=p / p.sum())
    b = np.cumsum(rng.integers(500, 1501, n // 500 + 1))
    x[b[b < n]] = bos
    x[0] = bos
    return x


def parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--vocab", type=int, default=1024, help="vocabulary size (3..65536; above the shard's largest id)")
    ap.add_argument("--order", type=int, default=2, help="PPM order (>= 0)")
    ap.add_argument("--exclusion", type=int, choices=(0, 1), default=1)
    ap.add_argument("--reset", choices=("never", "doc"), default="never")
    ap.add_argument("--shard", default=None, help="a val shard to tile to --tokens (default: synthetic Zipf)")
    ap.add_argument("--repeat", type=int, default=1, help="runs (the first one also pays for fresh memory)")
    ap.add_argument("--script", default=str(KIT), help="the train_gpt.py whose ppm_target_probs is measured")
    ap.add_argument("--other", default=None, metavar="PATH",
                    help="another train_gpt.py with ppm_target_probs: alternate with --script, print the ratio")
    return ap


def plan(a) -> tuple[list, np.ndarray]:
    """Every argument before any work: ([(name, ppm_target_probs)], the token stream)."""
    for name, lo, hi in (("tokens", 2, None), ("vocab", 3, 65536), ("order", 0, None), ("repeat", 1, None)):
        v = getattr(a, name)
        if v < lo or (hi is not None and v > hi):
            raise BenchError(f"--{name} {v} must be " + (f"in {lo}..{hi}" if hi else f"at least {lo}"))
    kit = import_kit(Path(a.script), "--script")
    if not hasattr(kit, "ppm_target_probs"):
        raise BenchError(f"--script {a.script} defines no ppm_target_probs")
    fns = [(a.script, kit.ppm_target_probs)]
    if a.other:
        other = import_other(a.other)
        if not hasattr(other, "ppm_target_probs"):
            raise BenchError(f"--other {a.other} defines no ppm_target_probs")
        fns.append((a.other, other.ppm_target_probs))
    shard = load_tokens(kit, a.shard) if a.shard else None
    if shard is not None and int(shard.max()) >= a.vocab:
        raise BenchError(f"--shard {a.shard} holds token id {int(shard.max())} >= --vocab {a.vocab}")
    return fns, stream(a.tokens, a.vocab, shard)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    fns, x = plan(a)
    print(f"ppm_target_probs: tokens={a.tokens:,} vocab={a.vocab} order={a.order} exclusion={a.exclusion} "
          f"reset={a.reset} source={a.shard or 'synthetic zipf'}")
    secs, outs = {name: [] for name, _ in fns}, {}
    for r in range(a.repeat):
        for name, fn in fns:
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn(x, a.vocab, order=a.order, exclusion=bool(a.exclusion), reset_doc=a.reset == "doc",
                            bos_id=1)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            secs[name].append(dt)
            print(f"run {r + 1} {name}: {dt:.2f} s (cpu {cpu:.2f} s), {a.tokens / dt:,.0f} tokens/s, "
                  f"extrapolated to {VAL_TOKENS:,} tokens: {dt * VAL_TOKENS / a.tokens:.1f} s, "
                  f"mean -log2 p = {-np.log2(outs[name]).mean():.4f} bits", flush=True)
    if a.other:
        mine, theirs = (statistics.median(secs[name]) for name, _ in fns)
        same = np.array_equal(outs[a.script], outs[a.other])
        diff = "identical" if same else f"max |difference| {np.abs(outs[a.script] - outs[a.other]).max():.3e}"
        print(f"median seconds: {mine:.2f} ({a.script}) vs {theirs:.2f} ({a.other}): ratio other/script "
              f"{theirs / mine:.3f}; probabilities {diff}")
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB
    print(f"peak resident memory of the process: {peak_gib:.2f} GiB (all runs together)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
