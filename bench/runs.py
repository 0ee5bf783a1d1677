"""Training runs as subprocesses, for bench_train.py and bench_flags.py: the environment they get, the figures read
from their own log lines, and the run itself (its own process group, stopped once it has logged what is measured).

Each run is `python SCRIPT` (or `python -m torch.distributed.run --standalone --nproc_per_node=K SCRIPT`) in its own
empty working directory. The figure is steady-state ms/step from the script's `step:S/N train_loss:X train_time:Tms`
lines: (T(last) - T(skip)) / (last - skip), so compilation and the first steps stay out.
"""
from __future__ import annotations

if not __package__:  # imported as plain `runs` from bench/: the one bootstrap (bench/_path.py)
    import _path  # noqa: F401

import os
import re
import time
from pathlib import Path

from kitlib import procs

TRAIN_RE = re.compile(r"step:\s*(\d+)/(\d+)\s+train_loss:\s*(\S+)\s+train_time:\s*([\d.]+)\s*ms")
PEAK_RE = re.compile(r"peak memory allocated:\s*([\d.]+)\s*MiB(?:\s+reserved:\s*([\d.]+)\s*MiB)?")
PARAMS_RE = re.compile(r"model_params:\s*(\d+)")
STOP_RE = re.compile(r"stopping_early:")
KIT_DEVICE_RE = re.compile(r"device:(\S+) gpu:(\S+) world_size:(\d+).*?attention:(\S+) compile:(\S+)")
# Never inherited from the caller's shell by a run (a stray RANK would make it wait for a process group).
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
            "ROLE_RANK", "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


class RunFailed(Exception):
    """A run that did not end as planned: why (the message) and its run_once result (``out``)."""

    def __init__(self, why: str, out: dict | None = None):
        super().__init__(why)
        self.out = out


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


def inherited_env(kit_names: set[str], threads: int | None) -> dict:
    """The caller's environment without the kit's settings (a stray NUM_LAYERS would change the run) and without
    torchrun's variables; OMP_NUM_THREADS from --threads."""
    env = {k: v for k, v in os.environ.items() if k not in kit_names and k not in DIST_ENV}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_once(cmd, env, cwd: Path, kill_at: str, timeout: float, verbose: bool) -> dict:
    """Run `cmd` in `cwd` (its output also in cwd/output.txt); stop its process group once it has logged peak memory
    (kill_at "peak"), its last training step ("train"), or never; end it after `timeout` seconds."""
    cwd.mkdir(parents=True, exist_ok=True)
    out_path = cwd / "output.txt"
    t0 = time.perf_counter()
    proc = procs.start(cmd, cwd=cwd, env=env)
    lines, killed = [], False
    try:
        with procs.Deadline(proc, timeout) as deadline, open(out_path, "w", encoding="utf-8") as f:
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
                    procs.stop(proc)
                    break
            proc.wait()
    except BaseException:  # Ctrl-C and friends: the run's whole process group goes too
        procs.stop(proc)
        raise
    finally:
        proc.stdout.close()
    return {"rc": proc.returncode, "killed": killed, "timed_out": deadline.expired, "lines": lines,
            "wall_s": time.perf_counter() - t0, "output": str(out_path)}


def measured_run(cmd, env, cwd: Path, kill_at: str, timeout: float, verbose: bool, skip: int):
    """run_once and its figures: (out, parsed log, (ms per step, from step, to step)); RunFailed when the run did not
    end as planned or logged fewer than two training steps."""
    out = run_once(cmd, env, cwd, kill_at, timeout, verbose)
    parsed = parse_log(out["lines"])
    why = problem(out, timeout)
    try:
        steady = steady_ms(parsed["steps"], skip)
    except ValueError as err:
        why = why or str(err)
    if why:
        raise RunFailed(why, out)
    return out, parsed, steady


def problem(out: dict, timeout: float) -> str | None:
    """Why a finished run_once did not end as planned, or None."""
    if out["timed_out"]:
        return f"timed out after {timeout:.0f} s"
    if out["rc"] != 0 and not out["killed"]:
        return (f"exited with status {out['rc']}" if out["rc"] > 0 else
                f"was killed by signal {-out['rc']}" + (" (out of memory?)" if out["rc"] == -9 else ""))
    return None


def tail(out: dict, n: int = 40) -> str:
    return "\n".join("    " + x for x in out["lines"][-n:])
