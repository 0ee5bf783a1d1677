"""Training throughput: the kit's train_gpt.py against another training script, same shards, same device, alternating.

    python bench/bench_train.py --other ../parameter-golf/train_gpt.py          # 1 GPU, baseline config
    python bench/bench_train.py --other UPSTREAM --nproc 8 --rounds 3 --json out.json --record
    python bench/bench_train.py --tiny [--other train_gpt.py]                    # CPU smoke test

Each run is a subprocess (`python SCRIPT`, or `torchrun --standalone --nproc_per_node=K SCRIPT`) in its own empty
working directory, with the same environment: the configuration (--preset, --env), ITERATIONS, VAL_LOSS_EVERY=0,
MAX_WALLCLOCK_SECONDS=0 (no cap) and TRAIN_LOG_EVERY chosen so the last step is logged; the kit also gets a cheap
final evaluation (FLOAT_EVAL=0, EVAL_STRIDE=EVAL_SEQ_LEN, TTT=0, PPMC=0). The figure is the steady-state time per
step read from the runs' own `step:S/N train_loss:... train_time:Tms` lines: (T(last) - T(skip)) / (last - skip), so
torch.compile and the first steps are left out. Each run is stopped once it has logged `peak memory allocated`
(after its training loop and end-of-training validation), unless --kill-at says otherwise.
"""
from __future__ import annotations

if not __package__:  # run as `python bench/bench_train.py`: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import common, runs
from bench.common import BenchError
from kitlib import procs
from kitlib.fileio import unwritable


def parser() -> argparse.ArgumentParser:
    ap = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_config_args(ap)
    ap.add_argument("--other", default=None, metavar="PATH",
                    help="the training script to compare with (a file, or a checkout holding train_gpt.py)")
    ap.add_argument("--other-python", default=sys.executable, help="interpreter for --other (default: this one)")
    ap.add_argument("--other-env", action="append", default=[], metavar="KEY=VAL",
                    help="setting for --other only (repeatable)")
    ap.add_argument("--other-cpu", action="store_true",
                    help="--other runs on the CPU (assumed only for kit-like scripts); without CUDA, other scripts "
                         "are skipped")
    ap.add_argument("--kit", default=str(common.KIT), help="the kit's train_gpt.py (default: this checkout's)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="training steps per run (default: 200 on CUDA, 6 with --tiny, 20 otherwise)")
    ap.add_argument("--skip", type=int, default=None,
                    help="first step of the measured interval (default 10; 2 with --tiny)")
    ap.add_argument("--rounds", type=int, default=3, help="kit/other alternations (default 3)")
    ap.add_argument("--nproc", type=int, default=1, help="processes per run; > 1 uses torchrun (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (CPU)")
    ap.add_argument("--kill-at", choices=("peak", "train", "never"), default="peak",
                    help="stop a run after its `peak memory allocated` line (default), after its last training "
                         "step (no peak memory then), or never (let its final export and evaluation finish)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    ap.add_argument("--workdir", default=None, help="where the runs' working directories go (default: a temp dir, "
                                                     "removed afterwards unless --keep or a run failed)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' working directories and outputs")
    ap.add_argument("--verbose", "-v", action="store_true", help="echo the runs' output")
    return ap


def other_script(a) -> Path | None:
    if not a.other:
        return None
    other = Path(a.other).expanduser().resolve()
    if other.is_dir():
        other = other / "train_gpt.py"
    if not other.is_file():
        raise BenchError(f"--other {a.other}: no such script")
    if shutil.which(a.other_python) is None:
        raise BenchError(f"--other-python {a.other_python}: no such executable")
    return other


def plan(a, cuda: bool) -> dict:
    """Every argument and the configuration, checked before any run: the shared env (preset < harness < --env),
    the kit's cheap-eval extras, the scripts to alternate."""
    common.check_args(a, at_least={"iterations": 2, "skip": 0, "rounds": 1, "nproc": 1, "threads": 1,
                                   "timeout": 1}, writable=("json",))
    why = a.workdir and unwritable(a.workdir, folder=True)
    if why:
        raise BenchError(f"--workdir {a.workdir}: {why}")
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    other = other_script(a)
    overrides = common.parse_overrides(a.env)
    other_env = common.parse_overrides(a.other_env, "--other-env")
    if other is None:
        common.check_settings(kit, overrides, "--env")
    env = common.preset_env("tiny" if a.tiny else a.preset, kit)
    for key in ("RUN_ID", "EVAL_ONLY"):  # each run gets its own RUN_ID; nothing here evaluates a given artifact
        env.pop(key, None)
    n = a.iterations or (int(env["ITERATIONS"]) if a.tiny else 200 if cuda else 20)
    env.update({"ITERATIONS": str(n), "VAL_LOSS_EVERY": "0", "MAX_WALLCLOCK_SECONDS": "0"})
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, {**env, **overrides})
    env.update({"DATA_PATH": str(data), "TOKENIZER_PATH": str(tok)})
    env.update(overrides)
    n = int(float(env["ITERATIONS"]))
    if "TRAIN_LOG_EVERY" not in overrides:
        env["TRAIN_LOG_EVERY"] = str(runs.log_every(n))
    skip = a.skip if a.skip is not None else (2 if a.tiny else 10)
    skip = skip if skip < n else max(1, n // 2)
    hp = common.kit_args(kit, env)
    kit_extra = {k: v for k, v in {"FLOAT_EVAL": "0", "EVAL_STRIDE": str(hp.eval_seq_len), "TTT": "0",
                                   "PPMC": "0"}.items() if k not in overrides}
    try:
        kit.check_config(common.kit_args(kit, {**env, **kit_extra}), a.nproc)
    except kit.ConfigError as err:
        raise BenchError(f"the kit rejects this configuration: {err}") from None
    common.load_val(kit, data, 2, hp.vocab_size)  # the val shards are readable before anything runs
    roles = [("kit", kit_path, sys.executable)]
    if other is not None:
        if cuda or a.other_cpu or common.is_kit_like(other):
            roles.append(("other", other, a.other_python))
        else:
            print(f"note: no CUDA device here and {other} is not known to run on the CPU (upstream's script needs "
                  "CUDA): measuring the kit only. Pass --other-cpu if it does run on the CPU.")
    return {"kit": kit, "kit_path": kit_path, "other": other, "env": env, "kit_extra": kit_extra,
            "other_env": other_env, "roles": roles, "n": n, "skip": skip, "tokens": hp.train_batch_tokens,
            "other_tokens": int(float(other_env.get("TRAIN_BATCH_TOKENS", hp.train_batch_tokens))), "data": data,
            "tok": tok, "inherited": runs.inherited_env(common.kit_settings(kit), a.threads)}


def show(a, p: dict, cuda: bool, dev_name: str, work: Path) -> None:
    print(f"device: {dev_name}")
    print(f"data: {p['data']}  tokenizer: {p['tok']}")
    for role, path, py in p["roles"]:
        print(f"{role}: {path}" + (f"  (python: {py})" if py != sys.executable else "")
              + ("  [kit-like: gets the kit's cheap-eval settings]" if role == "other" and common.is_kit_like(path)
                 else ""))
    print(f"config: {' '.join(f'{k}={v}' for k, v in p['env'].items() if k not in ('DATA_PATH', 'TOKENIZER_PATH'))}")
    print(f"kit only: {' '.join(f'{k}={v}' for k, v in p['kit_extra'].items())}"
          + (f"; other only: {' '.join(f'{k}={v}' for k, v in p['other_env'].items())}" if p["other_env"] else ""))
    if not cuda and not a.tiny and p["tokens"] > 65536:
        print(f"note: no CUDA device: {p['tokens']:,} tokens/step on the CPU takes minutes per step and much "
              "memory; --tiny is the CPU smoke test (or --preset presets/cpu_demo.env)")
    print(f"measure: ms/step from step {p['skip']} to step {p['n']} ({a.rounds} round(s), nproc {a.nproc}, "
          f"{p['tokens']:,} tokens/step); run dirs under {work}")


def one_run(a, p: dict, r: int, role: str, path: Path, py: str, work: Path) -> dict:
    env = {**p["inherited"], **p["env"], "RUN_ID": f"bench_{role}_r{r}", "PYTHONUNBUFFERED": "1"}
    if role == "kit" or common.is_kit_like(path):
        env.update(p["kit_extra"])
    if role == "other":
        env.update(p["other_env"])
    env["PYTHONPATH"] = os.pathsep.join([str(path.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = procs.script_command(path, a.nproc, py)
    print(f"[round {r}/{a.rounds}] {role}: running ...", flush=True)
    try:
        out, parsed, (ms, s_from, s_to) = runs.measured_run(cmd, env, work / f"r{r}_{role}", a.kill_at, a.timeout,
                                                            a.verbose, p["skip"])
    except runs.RunFailed as err:
        raise runs.RunFailed(f"{role} run (round {r}) {err}; full output: {err.out['output']}\n"
                             f"  command: {' '.join(cmd)}\n  last lines:\n{runs.tail(err.out)}") from None
    tps = (p["other_tokens"] if role == "other" else p["tokens"]) / (ms / 1000) if ms > 0 else None
    first = min(parsed["steps"])
    print(f"[round {r}/{a.rounds}] {role}: {ms:.2f} ms/step ({tps:,.0f} tokens/s) steps {s_from}->{s_to}, "
          f"wall {out['wall_s']:.0f} s", flush=True)
    return {"role": role, "round": r, "script": str(path), "ms_per_step": ms, "tokens_per_s": tps,
            "measured_from": s_from, "measured_to": s_to, "peak_mib": parsed["peak_mib"],
            "peak_reserved_mib": parsed["peak_reserved_mib"], "params": parsed["params"],
            "train_loss_last": parsed["losses"].get(s_to), "first_step": first,
            "first_step_ms": parsed["steps"][first], "step_avg_incl_first_ms": parsed["steps"][s_to] / s_to,
            "wall_s": out["wall_s"], "rc": out["rc"], "stopped_by_bench": out["killed"], "info": parsed["info"],
            "output": out["output"]}


def summarize(a, p: dict, results: list, cuda: bool) -> tuple[dict, str]:
    """Print the table and medians; returns (summary, the figures for --record)."""
    def peak(x):
        return None if x is None or (not cuda and x == 0) else f"{x:,.0f}"
    rows = [(x["role"], x["round"], f"{x['ms_per_step']:.2f}", f"{x['tokens_per_s']:,.0f}", peak(x["peak_mib"]),
             f"{x['params']:,}" if x["params"] else None, x["train_loss_last"],
             f"{x['first_step_ms']:.0f}") for x in results]
    print()
    print(common.table(["script", "round", "ms/step", "tokens/s", "peak MiB", "params", f"loss@{p['n']}",
                        "step1 ms"], rows))
    summary = {}
    for role, *_ in p["roles"]:
        mine = [x for x in results if x["role"] == role]
        summary[role] = {k: common.median([x[k] for x in mine]) for k in ("ms_per_step", "tokens_per_s", "peak_mib")}
    print()
    for role, s in summary.items():
        print(f"median {role}: {s['ms_per_step']:.2f} ms/step, {s['tokens_per_s']:,.0f} tokens/s"
              + (f", peak {s['peak_mib']:,.0f} MiB" if cuda and s["peak_mib"] == s["peak_mib"] else ""))
    k = summary["kit"]
    figures = f"kit {k['ms_per_step']:.2f} ms/step ({k['tokens_per_s']:,.0f} tok/s" + (
        f", {k['peak_mib']:,.0f} MiB" if cuda else "") + ")"
    if "other" in summary:
        ratios = [o["ms_per_step"] / k_["ms_per_step"] for k_, o in zip(
            [x for x in results if x["role"] == "kit"], [x for x in results if x["role"] == "other"])]
        ratio = summary["ratio_other_over_kit"] = common.median(ratios)
        summary["ratios"] = ratios
        verdict = (f"the kit is {ratio:.3f}x as fast" if ratio >= 1
                   else f"the other script is {1 / ratio:.3f}x as fast")
        print(f"ms/step ratio other/kit: {ratio:.3f} (median of {', '.join(f'{x:.3f}' for x in ratios)}): {verdict}")
        pk, po = results[0]["params"], next(x["params"] for x in results if x["role"] == "other")
        if pk and po and pk != po:
            print(f"warning: the scripts built different models ({pk:,} vs {po:,} parameters): check the "
                  "configuration (--env / --other-env) before comparing speeds")
        o = summary["other"]
        figures += (f"; other {o['ms_per_step']:.2f} ms/step ({o['tokens_per_s']:,.0f} tok/s"
                    + (f", {o['peak_mib']:,.0f} MiB" if cuda else "") + f"); other/kit {ratio:.3f}")
    figures += f"; steps {p['skip']}->{p['n']}, {a.rounds} rounds, nproc {a.nproc}, {p['tokens']:,} tokens/step"
    return summary, figures


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    import torch
    cuda = torch.cuda.is_available()
    p = plan(a, cuda)
    work = Path(a.workdir).resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    dev_name = (common.device_name(None, a.nproc) if cuda
                else common.device_name(torch.device("cpu"), a.nproc, a.threads))
    show(a, p, cuda, dev_name, work)
    results, failed = [], False
    try:
        for r in range(1, a.rounds + 1):
            for role, path, py in p["roles"]:
                results.append(one_run(a, p, r, role, path, py, work))
    except runs.RunFailed as err:
        failed = True
        print(f"error: {err}", file=sys.stderr)
        print(f"run directories kept in {work}", file=sys.stderr)
        return 1
    finally:
        if not failed and not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    summary, figures = summarize(a, p, results, cuda)
    if a.json:
        common.write_json(a.json, {
            "benchmark": "train", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "cuda": cuda, "kit": str(p["kit_path"]), "kit_sha256": common.file_sha(p["kit_path"]),
            "other": str(p["other"]) if p["other"] else None, "other_measured": "other" in summary,
            "nproc": a.nproc, "rounds": a.rounds, "iterations": p["n"], "skip": p["skip"],
            "tokens_per_step": p["tokens"], "env": p["env"], "kit_env": p["kit_extra"], "other_env": p["other_env"],
            "runs": results, "summary": summary})
    if a.record:
        common.record(a.results, "train", dev_name, figures, p["kit_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
