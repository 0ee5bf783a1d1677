"""What each technique flag costs in training: the kit on one base configuration, alone and with each flag on.

    python bench/bench_flags.py                                   # 1 GPU: baseline + every technique, 200 steps
    python bench/bench_flags.py --only VALUE_RESIDUAL=1 --only "GATED_ATTENTION=1 GATED_ATTENTION_MODE=element"
    python bench/bench_flags.py --tiny --only SMEAR_GATE=1        # CPU smoke test

Every configuration is the base (--preset, --env) plus its flags, run as its own `python train_gpt.py` subprocess
with the same ITERATIONS, shards and cheap final evaluation as bench_train.py (whose run machinery this uses). Rounds
go round-robin over the configurations, so that drift of the device spreads over all of them. Reported for each:
parameters, steady-state ms/step (step --skip to the last: torch.compile and the first steps left out), tokens/s,
the change in ms/step against the baseline, the train loss at the last step and peak memory (CUDA). A short budget
ranks no technique by loss (their gains show at full length); the loss shows that the run trained.
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_flags.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench import common, runs
from bench.common import BenchError
from kitlib import procs


def checked(kit, env: dict, name: str, flags: dict) -> str | None:
    """Why the kit refuses the base plus `flags` (a setting it does not read, or its own check), or None."""
    unknown = common.unknown_settings(kit, flags, f"configuration {name!r}")
    if unknown:
        return unknown
    try:
        kit.check_config(kit.Hyperparameters.from_env({**env, **flags}), 1)
    except kit.ConfigError as err:
        return f"configuration {name!r}: {err}"
    return None


def parse_config(text: str) -> dict:
    out = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise BenchError(f"--only {text!r}: expected KEY=VALUE[ KEY=VALUE ...]")
        out[key] = value
    if not out:
        raise BenchError("--only '': give at least one KEY=VALUE")
    return out


def parser() -> argparse.ArgumentParser:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_config_args(ap)
    ap.add_argument("--only", action="append", default=[], metavar="'KEY=VAL ...'",
                    help="a configuration to measure against the baseline (repeatable; default: every technique "
                         "value the kit declares with on=, its TECHNIQUES list)")
    ap.add_argument("--kit", default=str(common.KIT), help="the kit's train_gpt.py (default: this checkout's)")
    ap.add_argument("--iterations", type=int, default=None, help="steps per run (default 200 on CUDA, 20 on CPU)")
    ap.add_argument("--skip", type=int, default=None, help="measure from this step (default 10; 2 with --tiny)")
    ap.add_argument("--rounds", type=int, default=1, help="round-robin passes over the configurations (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (CPU)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    ap.add_argument("--verbose", "-v", action="store_true", help="echo the runs' output")
    return ap


def plan(a, cuda: bool) -> dict:
    """The base env and every configuration, each checked by the kit, before anything runs."""
    common.check_args(a, at_least={"iterations": 2, "skip": 0, "rounds": 1, "threads": 1, "timeout": 1},
                      writable=("json",))
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    common.check_settings(kit, common.parse_overrides(a.env), "--env")
    env = common.base_env(a, kit)
    for key in ("RUN_ID", "EVAL_ONLY"):
        env.pop(key, None)
    n = a.iterations or (int(env["ITERATIONS"]) if a.tiny else 200 if cuda else 20)
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, env)
    env.update({"ITERATIONS": str(n), "VAL_LOSS_EVERY": "0", "MAX_WALLCLOCK_SECONDS": "0", "DATA_PATH": str(data),
                "TOKENIZER_PATH": str(tok), "FLOAT_EVAL": "0", "TTT": "0", "PPMC": "0"})
    env.setdefault("TRAIN_LOG_EVERY", str(runs.log_every(n)))
    base = common.kit_args(kit, env)
    env.setdefault("EVAL_STRIDE", str(base.eval_seq_len))  # a cheap final evaluation (not measured)
    skip = a.skip if a.skip is not None else (2 if a.tiny else 10)
    configs = [("baseline", {})]
    for text in a.only or kit.TECHNIQUES:  # --only, else every technique's `on=` value from the kit's SETTINGS
        flags = parse_config(text)
        why = checked(kit, env, text, flags)
        if why and a.only:  # every configuration asked for is checked before anything runs
            raise BenchError(why)
        if why:  # a technique this base cannot take (e.g. XSA_LAST_N=4 on 2 layers) is left out, and said so
            print(f"note: left out: {why}")
        else:
            configs.append((text, flags))
    why = checked(kit, env, "baseline", {})
    if why:
        raise BenchError(why)
    common.load_val(kit, data, 2, base.vocab_size)
    return {"kit_path": kit_path, "env": env, "n": n, "skip": skip if skip < n else max(1, n // 2),
            "configs": configs, "tokens": base.train_batch_tokens,
            "inherited": runs.inherited_env(common.kit_settings(kit), a.threads)}


def measure(a, p: dict, work: Path) -> list[dict]:
    """Round-robin over the configurations; a failing run is one error message (BenchError, exit 1)."""
    out_runs = []
    for r in range(1, a.rounds + 1):
        for i, (name, flags) in enumerate(p["configs"]):
            env = {**p["inherited"], **p["env"], **flags, "RUN_ID": f"flags{i}_r{r}", "PYTHONUNBUFFERED": "1"}
            try:
                out, parsed, (ms, _, last) = runs.measured_run(procs.script_command(p["kit_path"], 1), env, work / f"r{r}_{i}",
                                                               "peak", a.timeout, a.verbose, p["skip"])
            except runs.RunFailed as err:
                raise runs.RunFailed(f"configuration {name!r} (round {r}): {err}; output kept in "
                                     f"{err.out['output']}\n{runs.tail(err.out, 30)}") from None
            out_runs.append({"config": name, "flags": flags, "round": r, "ms_per_step": ms,
                             "tokens_per_s": p["tokens"] / (ms / 1000), "params": parsed["params"],
                             "train_loss_last": parsed["losses"].get(last), "peak_mib": parsed["peak_mib"],
                             "wall_s": out["wall_s"]})
            print(f"[round {r}/{a.rounds}] {name}: {ms:.2f} ms/step, loss {out_runs[-1]['train_loss_last']} "
                  f"(wall {out['wall_s']:.0f} s)", flush=True)
    return out_runs


def summarize(p: dict, results: list, cuda: bool) -> dict:
    summary = {}
    for name, flags in p["configs"]:
        mine = [x for x in results if x["config"] == name]
        summary[name] = {"flags": flags, "params": mine[0]["params"], "train_loss_last": mine[-1]["train_loss_last"],
                         **{k: common.median([x[k] for x in mine]) for k in ("ms_per_step", "tokens_per_s",
                                                                              "peak_mib")}}
    ref = summary["baseline"]["ms_per_step"]
    for s in summary.values():
        s["vs_baseline_pct"] = 100 * (s["ms_per_step"] / ref - 1)
    print()
    print(common.table(
        ["configuration", "params", "ms/step", "tokens/s", "vs baseline", f"loss@{p['n']}", "peak MiB"],
        [(name, f"{s['params']:,}", f"{s['ms_per_step']:.2f}", f"{s['tokens_per_s']:,.0f}",
          "-" if name == "baseline" else f"{s['vs_baseline_pct']:+.1f}%", s["train_loss_last"],
          f"{s['peak_mib']:,.0f}" if cuda else None) for name, s in summary.items()]))
    return summary


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    p = plan(a, cuda)
    dev_name = common.device_name(None, 1) if cuda else common.device_name(torch.device("cpu"), 1, a.threads)
    print(f"device: {dev_name}")
    print(f"base: {' '.join(f'{k}={v}' for k, v in p['env'].items() if k not in ('DATA_PATH', 'TOKENIZER_PATH'))}")
    print(f"measure: ms/step from step {p['skip']} to step {p['n']}, {len(p['configs'])} configurations, "
          f"{a.rounds} round(s)")
    work = Path(tempfile.mkdtemp(prefix="bench_flags_"))
    try:
        results = measure(a, p, work)
    except runs.RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    summary = summarize(p, results, cuda)
    if a.json:
        common.write_json(a.json, {
            "benchmark": "flags", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "kit": str(p["kit_path"]), "kit_sha256": common.file_sha(p["kit_path"]), "iterations": p["n"],
            "skip": p["skip"], "rounds": a.rounds, "base_env": p["env"], "runs": results, "summary": summary})
    if a.record:
        figures = "; ".join(f"{name} {s['ms_per_step']:.1f} ms" + ("" if name == "baseline" else
                                                                  f" ({s['vs_baseline_pct']:+.1f}%)")
                            for name, s in summary.items())
        common.record(a.results, "flags", dev_name, f"{figures}; {p['n']} steps, {p['tokens']:,} tok/step",
                      p["kit_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
