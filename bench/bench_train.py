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

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import BenchError  # noqa: E402

TRAIN_RE = re.compile(r"step:\s*(\d+)/(\d+)\s+train_loss:\s*(\S+)\s+train_time:\s*([\d.]+)\s*ms")
PEAK_RE = re.compile(r"peak memory allocated:\s*([\d.]+)\s*MiB(?:\s+reserved:\s*([\d.]+)\s*MiB)?")
PARAMS_RE = re.compile(r"model_params:\s*(\d+)")
STOP_RE = re.compile(r"stopping_early:")
KIT_DEVICE_RE = re.compile(r"device:(\S+) gpu:(\S+) world_size:(\d+).*?attention:(\S+) compile:(\S+)")


def parse_log(lines) -> dict:
    """The figures a benchmark needs from a run's stdout (kit and upstream spellings)."""
    steps, params, peak, reserved, info = {}, None, None, None, {}
    for line in lines:
        m = TRAIN_RE.search(line)
        if m:
            steps[int(m.group(1))] = (float(m.group(4)), m.group(3), int(m.group(2)))
            continue
        m = PEAK_RE.search(line)
        if m:
            peak = float(m.group(1))
            reserved = float(m.group(2)) if m.group(2) else None
            continue
        m = PARAMS_RE.search(line)
        if m and params is None:
            params = int(m.group(1))
        m = KIT_DEVICE_RE.search(line)
        if m:
            info = {"device": m.group(1), "gpu": m.group(2), "attention": m.group(4), "compile": m.group(5)}
    return {"steps": {s: v[0] for s, v in steps.items()}, "losses": {s: v[1] for s, v in steps.items()},
            "iterations": next(iter(steps.values()))[2] if steps else None, "params": params, "peak_mib": peak,
            "peak_reserved_mib": reserved, "info": info}


def steady_ms(steps: dict, skip: int) -> tuple[float, int, int]:
    """(ms per step, from, to) between the first logged step >= skip and the last logged step."""
    logged = sorted(steps)
    if len(logged) < 2:
        raise ValueError(f"need two logged training steps, got {logged}")
    later = [s for s in logged if s >= skip]
    a = later[0] if len(later) >= 2 else logged[0]
    b = logged[-1]
    return (steps[b] - steps[a]) / (b - a), a, b


def log_every(n: int) -> int:
    """A TRAIN_LOG_EVERY that divides N (so step N is logged) and logs about 20 points."""
    return next(d for d in range(max(1, n // 20), n + 1) if n % d == 0)


class RunFailed(Exception):
    pass


def kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop the run and all its children (torchrun workers): SIGTERM to its process group, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_once(cmd, env, cwd: Path, kill_at: str, timeout: float, verbose: bool) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    out_path = cwd / "output.txt"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        kill_group(proc, grace=5)
    timer = threading.Timer(timeout, on_timeout)
    timer.daemon = True
    timer.start()
    lines, killed = [], False
    try:
        with open(out_path, "w", encoding="utf-8") as f:
            for line in proc.stdout:
                f.write(line)
                f.flush()
                line = line.rstrip("\n")
                lines.append(line)
                if verbose:
                    print(f"    | {line}", flush=True)
                m = TRAIN_RE.search(line)
                done_training = bool(m and m.group(1) == m.group(2)) or bool(STOP_RE.search(line))
                if (kill_at == "peak" and PEAK_RE.search(line)) or (kill_at == "train" and done_training):
                    killed = True
                    kill_group(proc)
                    break
    finally:
        timer.cancel()
        if proc.poll() is None and not killed:
            proc.wait()
        proc.stdout.close()
        proc.wait()
    return {"rc": proc.returncode, "killed": killed, "timed_out": timed_out.is_set(), "lines": lines,
            "wall_s": time.perf_counter() - t0, "output": str(out_path)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = ap.parse_args(argv)

    import torch
    kit_path = Path(a.kit).resolve()
    kit = common.import_kit(kit_path)
    cuda = torch.cuda.is_available()
    other = None
    if a.other:
        other = Path(a.other).expanduser().resolve()
        if other.is_dir():
            other = other / "train_gpt.py"
        if not other.is_file():
            raise BenchError(f"--other {a.other}: no such script")
    if a.rounds < 1 or a.nproc < 1:
        raise BenchError("--rounds and --nproc must be >= 1")

    # The shared configuration: preset < harness settings < --env.
    overrides = common.parse_overrides(a.env)
    env = common.preset_env("tiny" if a.tiny else a.preset, kit)
    for key in ("RUN_ID", "EVAL_ONLY"):  # each run gets its own RUN_ID; nothing here evaluates a given artifact
        env.pop(key, None)
    iterations = a.iterations or (int(env["ITERATIONS"]) if a.tiny else 200 if cuda else 20)
    env.update({"ITERATIONS": str(iterations), "VAL_LOSS_EVERY": "0", "MAX_WALLCLOCK_SECONDS": "0"})
    data, tok = common.resolve_data(a.data_path, a.tokenizer_path, {**env, **overrides})
    env.update({"DATA_PATH": str(data), "TOKENIZER_PATH": str(tok)})
    env.update(overrides)
    n = int(float(env["ITERATIONS"]))
    if "TRAIN_LOG_EVERY" not in overrides:
        env["TRAIN_LOG_EVERY"] = str(log_every(n))
    skip = a.skip if a.skip is not None else (2 if a.tiny else 10)
    if skip >= n:
        skip = max(1, n // 2)
    hp = common.kit_args(kit, env)
    kit_extra = {k: v for k, v in {"FLOAT_EVAL": "0", "EVAL_STRIDE": str(hp.eval_seq_len), "TTT": "0",
                                   "PPMC": "0"}.items() if k not in overrides}
    try:
        kit.check_config(common.kit_args(kit, {**env, **kit_extra}), a.nproc)
    except kit.ConfigError as err:
        raise BenchError(f"the kit rejects this configuration: {err}") from None
    tokens_per_step = hp.train_batch_tokens
    other_env = common.parse_overrides(a.other_env)
    other_tokens = int(float(other_env.get("TRAIN_BATCH_TOKENS", tokens_per_step)))

    roles = [("kit", kit_path, sys.executable)]
    if other is not None:
        cpu_ok = a.other_cpu or common.is_kit_like(other)
        if cuda or cpu_ok:
            roles.append(("other", other, a.other_python))
        else:
            print(f"note: no CUDA device here and {other} is not known to run on the CPU (upstream's script needs "
                  "CUDA): measuring the kit only. Pass --other-cpu if it does run on the CPU.")
    if not cuda and not a.tiny and tokens_per_step > 65536:
        print(f"note: no CUDA device: {tokens_per_step:,} tokens/step on the CPU takes minutes per step and much "
              "memory; --tiny is the CPU smoke test (or --preset presets/cpu_demo.env)")

    inherited = {k: v for k, v in os.environ.items()
                 if k not in {f[0] for f in kit.FLAGS} and k not in common.DIST_ENV}
    if a.threads:
        inherited["OMP_NUM_THREADS"] = str(a.threads)
    work = Path(a.workdir).resolve() if a.workdir else Path(tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    dev_name = (common.device_name(None, a.nproc) if cuda
                else common.device_name(torch.device("cpu"), a.nproc, a.threads))
    print(f"device: {dev_name}")
    print(f"data: {data}  tokenizer: {tok}")
    for role, path, py in roles:
        print(f"{role}: {path}" + (f"  (python: {py})" if py != sys.executable else "")
              + ("  [kit-like: gets the kit's cheap-eval settings]" if role == "other" and common.is_kit_like(path)
                 else ""))
    print(f"config: {' '.join(f'{k}={v}' for k, v in env.items() if k not in ('DATA_PATH', 'TOKENIZER_PATH'))}")
    print(f"kit only: {' '.join(f'{k}={v}' for k, v in kit_extra.items())}"
          + (f"; other only: {' '.join(f'{k}={v}' for k, v in other_env.items())}" if other_env else ""))
    print(f"measure: ms/step from step {skip} to step {n} ({a.rounds} round(s), nproc {a.nproc}, "
          f"{tokens_per_step:,} tokens/step); run dirs under {work}")

    results, failed = [], False
    try:
        for r in range(1, a.rounds + 1):
            for role, path, py in roles:
                run_env = {**inherited, **env, "RUN_ID": f"bench_{role}_r{r}", "PYTHONUNBUFFERED": "1"}
                if role == "kit" or common.is_kit_like(path):
                    run_env.update(kit_extra)
                if role == "other":
                    run_env.update(other_env)
                run_env["PYTHONPATH"] = os.pathsep.join(
                    [str(path.parent)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
                cmd = [py, str(path)] if a.nproc == 1 else [
                    py, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}", str(path)]
                print(f"[round {r}/{a.rounds}] {role}: running ...", flush=True)
                out = run_once(cmd, run_env, work / f"r{r}_{role}", a.kill_at, a.timeout, a.verbose)
                parsed = parse_log(out["lines"])
                problem = None
                if out["timed_out"]:
                    problem = f"timed out after {a.timeout:.0f} s"
                elif out["rc"] != 0 and not out["killed"]:
                    problem = (f"exited with status {out['rc']}" if out["rc"] > 0 else
                               f"was killed by signal {-out['rc']}" + (" (out of memory?)" if out["rc"] == -9 else ""))
                try:
                    ms, s_from, s_to = steady_ms(parsed["steps"], skip)
                except ValueError as err:
                    ms, s_from, s_to = None, None, None
                    problem = problem or str(err)
                if problem:
                    failed = True
                    tail = "\n".join("    " + x for x in out["lines"][-40:])
                    raise RunFailed(f"{role} run (round {r}) {problem}; full output: {out['output']}\n"
                                    f"  command: {' '.join(cmd)}\n  last lines:\n{tail}")
                tps = (other_tokens if role == "other" else tokens_per_step) / (ms / 1000) if ms > 0 else None
                first = min(parsed["steps"])
                res = {"role": role, "round": r, "script": str(path), "ms_per_step": ms, "tokens_per_s": tps,
                       "measured_from": s_from, "measured_to": s_to, "peak_mib": parsed["peak_mib"],
                       "peak_reserved_mib": parsed["peak_reserved_mib"], "params": parsed["params"],
                       "train_loss_last": parsed["losses"].get(s_to),
                       "first_step": first, "first_step_ms": parsed["steps"][first],
                       "step_avg_incl_first_ms": parsed["steps"][s_to] / s_to, "wall_s": out["wall_s"],
                       "rc": out["rc"], "stopped_by_bench": out["killed"], "info": parsed["info"],
                       "output": out["output"]}
                results.append(res)
                print(f"[round {r}/{a.rounds}] {role}: {ms:.2f} ms/step ({tps:,.0f} tokens/s) steps {s_from}->{s_to}, "
                      f"wall {out['wall_s']:.0f} s", flush=True)
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"run directories kept in {work}", file=sys.stderr)
        return 1
    finally:
        if not failed and not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def peak(x):
        return None if x is None or (not cuda and x == 0) else f"{x:,.0f}"
    rows = [(x["role"], x["round"], f"{x['ms_per_step']:.2f}", f"{x['tokens_per_s']:,.0f}", peak(x["peak_mib"]),
             f"{x['params']:,}" if x["params"] else None, x["train_loss_last"],
             f"{x['first_step_ms']:.0f}") for x in results]
    print()
    print(common.table(["script", "round", "ms/step", "tokens/s", "peak MiB", "params", f"loss@{n}", "step1 ms"],
                       rows))
    summary = {}
    for role, *_ in roles:
        mine = [x for x in results if x["role"] == role]
        summary[role] = {"ms_per_step": common.median([x["ms_per_step"] for x in mine]),
                         "tokens_per_s": common.median([x["tokens_per_s"] for x in mine]),
                         "peak_mib": common.median([x["peak_mib"] for x in mine])}
    print()
    for role, s in summary.items():
        print(f"median {role}: {s['ms_per_step']:.2f} ms/step, {s['tokens_per_s']:,.0f} tokens/s"
              + (f", peak {s['peak_mib']:,.0f} MiB" if cuda and s["peak_mib"] == s["peak_mib"] else ""))
    figures = (f"kit {summary['kit']['ms_per_step']:.2f} ms/step ({summary['kit']['tokens_per_s']:,.0f} tok/s"
               + (f", {summary['kit']['peak_mib']:,.0f} MiB" if cuda else "") + ")")
    if "other" in summary:
        ratios = [o["ms_per_step"] / k["ms_per_step"] for k, o in zip(
            [x for x in results if x["role"] == "kit"], [x for x in results if x["role"] == "other"])]
        ratio = common.median(ratios)
        summary["ratio_other_over_kit"] = ratio
        summary["ratios"] = ratios
        verdict = (f"the kit is {ratio:.3f}x as fast" if ratio >= 1
                   else f"the other script is {1 / ratio:.3f}x as fast")
        print(f"ms/step ratio other/kit: {ratio:.3f} (median of {', '.join(f'{x:.3f}' for x in ratios)}): {verdict}")
        pk, po = results[0]["params"], next(x["params"] for x in results if x["role"] == "other")
        if pk and po and pk != po:
            print(f"warning: the scripts built different models ({pk:,} vs {po:,} parameters): check the "
                  "configuration (--env / --other-env) before comparing speeds")
        figures += (f"; other {summary['other']['ms_per_step']:.2f} ms/step ({summary['other']['tokens_per_s']:,.0f}"
                    f" tok/s" + (f", {summary['other']['peak_mib']:,.0f} MiB" if cuda else "") + f"); other/kit "
                    f"{ratio:.3f}")
    figures += f"; steps {skip}->{n}, {a.rounds} rounds, nproc {a.nproc}, {tokens_per_step:,} tokens/step"
    if a.json:
        common.write_json(a.json, {
            "benchmark": "train", "date": common.now_utc(), "command": common.command_line(), "device": dev_name,
            "cuda": cuda, "kit": str(kit_path), "kit_sha256": common.file_sha(kit_path),
            "other": str(other) if other else None, "other_measured": "other" in summary, "nproc": a.nproc,
            "rounds": a.rounds, "iterations": n, "skip": skip, "tokens_per_step": tokens_per_step, "env": env,
            "kit_env": kit_extra, "other_env": other_env, "runs": results, "summary": summary})
    if a.record:
        common.record(a.results, "train", dev_name, figures, kit_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
