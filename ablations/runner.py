"""Run a grid: every group x seed x configuration through train_gpt.py, resumably.

Layout of the output directory (default runs/<grid name>):
    grid.toml                     a copy of the grid
    results.csv                   one row per finished run (RESULT_COLUMNS)
    logs/<RUN_ID>.txt, .json      written by train_gpt.py (the runs execute with this directory as cwd)
    logs/<RUN_ID>.console.txt     the run's stdout+stderr as captured by the runner
    logs/<RUN_ID>.failed-N.txt    the console of the N-th failed or interrupted attempt
    artifacts/<RUN_ID>.ptz        written by train_gpt.py
    data -> <repo>/data           symlink so that train_gpt's relative data paths resolve

A run counts as finished when logs/<RUN_ID>.json has status "complete" and results.csv has its
row; finished runs are never redone. Anything else is (re)run, after archiving the previous
attempt's console as failed-N.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ablations.grid import MATCH_KEY, Grid, GridError, RunSpec, load_grid

RESULT_COLUMNS = [
    "group", "config", "seed", "run_id", "status",
    # final scores: val_bpb/val_loss are the submission's score (the last final_*_exact line)
    "val_bpb", "val_loss", "final_metric",
    "float_val_bpb", "float_val_loss",          # pre-quantisation sliding window
    "sw_val_bpb", "sw_val_loss",                # quantised artifact, sliding window
    "ppmc_val_bpb", "ppmc_val_loss",            # PPMC mix (PPMC=1)
    "ttt_val_bpb", "ttt_val_loss",              # score-first TTT (TTT=1)
    "ttt_ppmc_val_bpb", "ttt_ppmc_val_loss",
    "quant_gap_bpb", "unigram_val_bpb",
    "artifact_bytes", "model_bytes", "code_bytes", "over_budget",
    "num_params", "model_dim", "matched_to", "match_target_params",
    "steps", "iterations", "stopped_early", "step_avg_ms", "tokens_per_step",
    "train_seconds", "eval_seconds", "wall_seconds", "peak_mem_mib",
    "world_size", "device", "gpu_name", "attention_kernel", "compile_mode",
    "code_sha256", "overrides", "log_path", "json_path",
]

SCORE_COLUMNS = {  # EVAL_MODE=doc names its window scores doc_window: the same columns
    "float_sliding_window": "float",
    "float_doc_window": "float",
    "sliding_window": "sw",
    "doc_window": "sw",
    "sliding_window_ppmc": "ppmc",
    "doc_window_ppmc": "ppmc",
    "ttt": "ttt",
    "ttt_ppmc": "ttt_ppmc",
}


class RunnerError(RuntimeError):
    """Setup problem (bad script, changed grid, ...); one line for the user."""


# ---------------------------------------------------------------- train_gpt import and parameter matching

def import_script(script: str | Path):
    """Import train_gpt.py by path (its main() only runs under __main__)."""
    script = Path(script).resolve()
    if not script.is_file():
        raise RunnerError(f"training script not found: {script}")
    name = "_ablations_" + "".join(ch if ch.isalnum() else "_" for ch in script.stem)
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise RunnerError(f"cannot import {script}")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - report any import failure as one line
        raise RunnerError(f"importing {script} failed: {type(e).__name__}: {e}") from e
    finally:
        try:
            sys.path.remove(str(script.parent))
        except ValueError:
            pass
    return mod


def _hp_int(mod, env: dict[str, str], key: str) -> int:
    if key in env:
        try:
            return int(env[key])
        except ValueError:
            raise RunnerError(f"{key}={env[key]!r} is not an integer") from None
    hp = getattr(mod, "Hyperparameters", None)
    if hp is not None and hasattr(hp, "from_env"):
        try:
            return int(getattr(hp.from_env(env), key.lower()))
        except Exception as e:  # noqa: BLE001
            raise RunnerError(f"cannot read the default {key} from Hyperparameters.from_env: {e}") from e
    raise RunnerError(f"{key} is not set and the script has no Hyperparameters.from_env to give its default")


def match_model_dim(count_params, env: dict[str, str], target_params: int, num_heads: int, model_dim: int,
                    even_head_dim: bool = True, max_factor: int = 16) -> tuple[int, int]:
    """Smallest MODEL_DIM, a multiple of num_heads, whose count_params reaches target_params.

    Widths with an odd head dim (RoPE rotates pairs; train_gpt's check_config rejects them) and widths
    the model rejects (count_params raises) are stepped over. Returns (model_dim, its parameter count)."""
    step = num_heads
    start = max(step, -(-model_dim // step) * step)
    limit = max(start * max_factor, step * 64)
    cache: dict[int, int | None] = {}

    def count(d: int) -> int | None:
        if d not in cache:
            if even_head_dim and (d // step) % 2:
                cache[d] = None
                return None
            try:
                cache[d] = int(count_params({**env, "MODEL_DIM": str(d)}))
            except Exception:  # noqa: BLE001 - an invalid width
                cache[d] = None
        return cache[d]

    d = start
    while count(d) is None or count(d) < target_params:  # widen
        d += step
        if d > limit:
            raise RunnerError(f"no MODEL_DIM up to {limit} (step {step}) reaches {target_params} parameters")
    best = d
    d = best - step
    while d >= step:  # the smallest: narrow while still enough (start may already be too wide)
        c = count(d)
        if c is not None:
            if c < target_params:
                break
            best = d
        d -= step
    return best, int(count(best))


def known_settings(mod) -> set[str] | None:
    """The env names the script reads (Hyperparameters.from_env({}).as_dict() and FLAGS), or None if unknown."""
    names: set[str] = set()
    flags = getattr(mod, "FLAGS", None)
    if isinstance(flags, (list, tuple)):
        names |= {f[0] for f in flags if isinstance(f, (list, tuple)) and f and isinstance(f[0], str)}
    hp = getattr(mod, "Hyperparameters", None)
    if hp is not None and hasattr(hp, "from_env"):
        try:
            d = hp.from_env({}).as_dict()
            names |= {k for k in d if isinstance(k, str)}
        except Exception:  # noqa: BLE001
            pass
    return names or None


def check_settings(grid: Grid, runs: list[RunSpec], mod) -> None:
    """Refuse env names the script does not read: a typo or a flag the script lacks would otherwise make two
    configurations silently identical."""
    known = known_settings(mod)
    if known is None:
        return
    unknown: dict[str, set[str]] = {}
    for r in runs:
        for k in r.env:
            if k not in known:
                unknown.setdefault(k, set()).add(r.config)
    if unknown:
        parts = [f"{k} (in {', '.join(sorted(c))})" for k, c in sorted(unknown.items())]
        raise RunnerError(f"the training script does not read setting(s) {'; '.join(parts)}: a typo or a flag it "
                          f"lacks (pass --allow-unknown-settings to run anyway)")


def param_match(mod, env: dict[str, str]) -> dict:
    """For a REVIEW_RESIDUAL configuration `env` of the script `mod` (its count_params and Hyperparameters): the
    smallest MODEL_DIM (steps of NUM_HEADS, even head dims; depth and heads fixed) at which HIGHWAY and the plain
    residual reach at least Review's parameter count. Returns {review|highway|plain: {MODEL_DIM, params}}."""
    if not hasattr(mod, "count_params"):
        raise RunnerError("the script has no count_params(env)")
    base = {k: v for k, v in env.items() if k not in ("REVIEW_RESIDUAL", "HIGHWAY")}
    try:
        review = int(mod.count_params({**base, "REVIEW_RESIDUAL": "1"}))
    except Exception as e:  # noqa: BLE001 - the script's own message, as one line
        raise RunnerError(f"count_params of the Review configuration failed: {e}") from None
    heads, dim0 = _hp_int(mod, base, "NUM_HEADS"), _hp_int(mod, base, "MODEL_DIM")
    out = {"review": {"MODEL_DIM": dim0, "params": review}}
    for name, extra in (("highway", {"HIGHWAY": "1"}), ("plain", {})):
        dim, n = match_model_dim(mod.count_params, {**base, **extra}, review, heads, dim0)
        out[name] = {"MODEL_DIM": dim, "params": n}
    return out


def resolve_matches(grid: Grid, runs: list[RunSpec], script: str | Path | None, log=print, mod=None) -> None:
    """Set MODEL_DIM in the env of every run whose configuration has MATCH_PARAMS_OF."""
    if not any(r.matched_to for r in runs):
        return
    if mod is None:
        if script is None:
            raise RunnerError(f"{MATCH_KEY} needs the training script's count_params")
        mod = import_script(script)
    count_params = getattr(mod, "count_params", None)
    if count_params is None:
        raise RunnerError(f"{script} has no count_params(env) for {MATCH_KEY}")
    done: dict[tuple[str, str], tuple[int, int, int]] = {}
    for r in runs:
        if not r.matched_to:
            continue
        k = (r.group, r.config)
        if k not in done:
            tgt_env = {**os.environ, **grid.overrides(r.group, r.matched_to)}
            try:
                target = int(count_params(tgt_env))
            except Exception as e:  # noqa: BLE001
                raise RunnerError(f"count_params failed for {r.matched_to!r} (group {r.group!r}): {e}") from e
            env = {**os.environ, **r.env}
            heads = _hp_int(mod, env, "NUM_HEADS")
            dim0 = _hp_int(mod, env, "MODEL_DIM")
            dim, n = match_model_dim(count_params, env, target, heads, dim0)
            done[k] = (dim, n, target)
            gname = f"group {r.group}: " if r.group else ""
            log(f"[ablations] {gname}{r.config} matched to {r.matched_to} ({target:,} params): "
                f"MODEL_DIM {dim0} -> {dim} ({n:,} params)")
        dim, n, target = done[k]
        r.env["MODEL_DIM"] = str(dim)
        r.match_target_params = target
        r.matched_params = n


# ---------------------------------------------------------------- results.csv

def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_results(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in RESULT_COLUMNS})
    os.replace(tmp, path)


def append_result(path: Path, row: dict) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != RESULT_COLUMNS:  # an older layout: rewrite with the current columns
            write_results(path, read_results(path) + [row])
            return
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in RESULT_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def read_run_json(path: Path) -> dict | None:
    try:
        with path.open(encoding="utf-8") as f:
            js = json.load(f)
    except (OSError, ValueError):
        return None
    return js if isinstance(js, dict) else None


def is_complete(js: dict | None) -> bool:
    return bool(js) and js.get("status") == "complete"


def row_from_json(js: dict, run: RunSpec, out: Path, wall_seconds: float | None = None) -> dict:
    def g(*keys):
        v = js
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    def secs(ms):
        return None if ms is None else float(ms) / 1000.0

    row = {"group": run.group, "config": run.config, "seed": run.seed, "run_id": run.run_id,
           "status": js.get("status")}
    row["val_bpb"] = g("final", "val_bpb")
    row["val_loss"] = g("final", "val_loss")
    row["final_metric"] = g("final", "metric")
    scores = js.get("scores") or {}
    for key, prefix in SCORE_COLUMNS.items():
        s = scores.get(key) or {}
        row[f"{prefix}_val_bpb"] = s.get("val_bpb")
        row[f"{prefix}_val_loss"] = s.get("val_loss")
    if row["val_bpb"] is None and scores:  # no "final" block: the last score present
        for key in reversed(list(SCORE_COLUMNS)):
            if key in scores:
                row["val_bpb"], row["val_loss"] = scores[key].get("val_bpb"), scores[key].get("val_loss")
                row["final_metric"] = key
                break
    if row["sw_val_bpb"] is not None and row["float_val_bpb"] is not None:
        row["quant_gap_bpb"] = float(row["sw_val_bpb"]) - float(row["float_val_bpb"])
    for k in ("unigram_val_bpb", "artifact_bytes", "model_bytes", "code_bytes", "over_budget", "num_params",
              "steps", "iterations", "stopped_early", "step_avg_ms", "tokens_per_step", "peak_mem_mib",
              "world_size", "device", "gpu_name", "attention_kernel", "compile_mode", "code_sha256"):
        row[k] = js.get(k)
    cfg = js.get("config") or {}
    row["model_dim"] = cfg.get("MODEL_DIM", run.env.get("MODEL_DIM"))
    row["matched_to"] = run.matched_to
    row["match_target_params"] = run.match_target_params
    row["train_seconds"] = secs(js.get("train_time_ms"))
    row["eval_seconds"] = secs(js.get("eval_time_ms"))
    row["wall_seconds"] = None if wall_seconds is None else round(wall_seconds, 3)
    row["overrides"] = json.dumps({k: v for k, v in run.env.items()}, sort_keys=True)
    row["log_path"] = str(Path("logs") / f"{run.run_id}.txt")
    row["json_path"] = str(Path("logs") / f"{run.run_id}.json")
    return row


# ---------------------------------------------------------------- attempts

def _paths(out: Path, rid: str) -> dict[str, Path]:
    return {"console": out / "logs" / f"{rid}.console.txt", "txt": out / "logs" / f"{rid}.txt",
            "json": out / "logs" / f"{rid}.json", "artifact": out / "artifacts" / f"{rid}.ptz"}


def _next_failed(out: Path, rid: str) -> Path:
    n = 1
    while (out / "logs" / f"{rid}.failed-{n}.txt").exists():
        n += 1
    return out / "logs" / f"{rid}.failed-{n}.txt"


def archive_attempt(out: Path, rid: str, reason: str) -> Path | None:
    """Keep a failed/interrupted attempt's console (or text log) as failed-N.txt; clear its partial outputs."""
    p = _paths(out, rid)
    src = None
    if p["console"].is_file() and p["console"].stat().st_size > 0:
        src = p["console"]
    elif p["txt"].is_file() and p["txt"].stat().st_size > 0:
        src = p["txt"]
    dest = None
    if src is not None:
        dest = _next_failed(out, rid)
        with dest.open("w", encoding="utf-8") as f:
            f.write(f"# ablations: {reason}\n")
            f.write(src.read_text(encoding="utf-8", errors="replace"))
    for k in ("console", "txt", "json", "artifact"):
        try:
            p[k].unlink()
        except FileNotFoundError:
            pass
    return dest


def _pdeathsig():  # the child gets SIGTERM if the runner dies (Linux), so no orphan keeps running
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def command(script: Path, nproc: int, python: str) -> list[str]:
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    return [python, str(script)]


def _fmt_dur(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


RUN_TIMEOUT_STATUS = 124


def run_one(run: RunSpec, out: Path, script: Path, nproc: int, python: str, verbose: bool, status,
            timeout: float | None = None) -> int:
    """Run one training process; stream its output to logs/<RUN_ID>.console.txt. Returns its exit status
    (RUN_TIMEOUT_STATUS when `timeout` seconds passed and the process group was ended)."""
    p = _paths(out, run.run_id)
    env = {**os.environ, **run.env, "RUN_ID": run.run_id, "SEED": str(run.seed), "PYTHONUNBUFFERED": "1"}
    cmd = command(script, nproc, python)
    with p["console"].open("w", encoding="utf-8") as con:
        con.write(f"# ablations: cwd={out} cmd={' '.join(cmd)}\n")
        con.write(f"# ablations: env {json.dumps({**run.env, 'RUN_ID': run.run_id, 'SEED': str(run.seed)}, sort_keys=True)}\n")
        con.flush()
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, errors="replace", start_new_session=True,
                                preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            _stop(proc)

        timer = threading.Timer(timeout, expire) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                con.write(line)
                con.flush()
                status(line.rstrip("\n"), verbose)
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            if timer:
                timer.cancel()
        if timed_out.is_set():
            con.write(f"\n# ablations: ended after the per-run timeout of {timeout:g} s\n")
            return RUN_TIMEOUT_STATUS
        return code


def _stop(proc: subprocess.Popen) -> None:
    """End the run's process group (torchrun and its workers), politely then firmly."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _link_data(out: Path, script: Path) -> None:
    link = out / "data"
    if link.exists() or link.is_symlink():
        return
    for src in (Path.cwd() / "data", script.parent / "data"):
        if src.is_dir():
            try:
                link.symlink_to(src.resolve(), target_is_directory=True)
            except OSError:
                pass
            return


def check_grid_copy(grid: Grid, grid_path: Path, out: Path, force: bool) -> None:
    """Keep a copy of the grid beside results.csv; refuse to mix a different grid into it without --force."""
    copy = out / "grid.toml"
    if copy.is_file():
        try:
            old = load_grid(copy)
            same = old.name == grid.name and (
                {k: v for k, v in old.raw.items() if k != "name"} == {k: v for k, v in grid.raw.items() if k != "name"})
        except GridError:
            same = False
        if same:
            return
        if not force:
            raise RunnerError(f"{out} holds results of a different grid ({copy}); use another --out, "
                              f"or --force to continue there with the new grid")
    text = grid_path.read_text(encoding="utf-8")
    if "name" not in grid.raw:  # the copy is called grid.toml: pin the name taken from the file's stem
        text = f'name = "{grid.name}"\n' + text
    copy.write_text(text, encoding="utf-8")


def run_grid(grid_path: str | Path, out_dir: str | Path | None = None, script: str | Path = "train_gpt.py",
             dry_run: bool = False, force: bool = False, verbose: bool = False, python: str | None = None,
             max_runs: int | None = None, allow_unknown: bool = False, run_timeout: float | None = None,
             log=None) -> int:
    """Run (or resume) a grid. Returns 0 when every run is complete, 1 if some failed, 130 if interrupted."""
    from tqdm import tqdm

    def say(msg: str) -> None:
        (log or (lambda m: tqdm.write(m, file=sys.stderr)))(msg)

    grid_path = Path(grid_path)
    grid = load_grid(grid_path)
    out = Path(out_dir) if out_dir is not None else Path("runs") / grid.name
    script_p = Path(script).resolve()
    python = python or sys.executable
    runs = grid.runs()
    if not dry_run and not script_p.is_file():
        raise RunnerError(f"training script not found: {script_p}")
    mod = import_script(script_p) if script_p.is_file() else None
    resolve_matches(grid, runs, script_p if mod else None, log=say, mod=mod)
    if mod is not None and not allow_unknown:
        check_settings(grid, runs, mod)

    if dry_run:
        say(f"[ablations] grid {grid.name}: {len(runs)} runs ({len(grid.group_names)} group(s) x "
            f"{len(grid.seeds)} seed(s) x {len(grid.configs)} config(s)), nproc={grid.nproc}, out={out}")
        for r in runs:
            say(f"  {r.run_id}: {' '.join(f'{k}={v}' for k, v in r.env.items())}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    check_grid_copy(grid, grid_path, out, force)
    _link_data(out, script_p)
    results = out / "results.csv"

    # what is finished: a complete JSON and a row; recover rows of complete runs; drop stale rows
    rows = read_results(results)
    by_key = {}
    for row in rows:
        by_key[(row.get("group", ""), row.get("config", ""), row.get("seed", ""))] = row
    done: set[tuple[str, str, str]] = set()
    for r in runs:
        js = read_run_json(_paths(out, r.run_id)["json"])
        row = by_key.get(r.key)
        if is_complete(js) and row is not None:
            done.add(r.key)
        elif is_complete(js) and row is None:
            say(f"[ablations] {r.run_id}: complete JSON without a results row; recovering the row")
            append_result(results, row_from_json(js, r, out))
            done.add(r.key)
    planned = {r.key for r in runs}
    stale = [k for k, row in by_key.items() if k in planned and k not in done]
    if stale:
        say(f"[ablations] dropping {len(stale)} results row(s) whose run JSON is missing or incomplete; they rerun")
        keep = [row for row in read_results(results)
                if (row.get("group", ""), row.get("config", ""), row.get("seed", "")) not in set(stale)]
        write_results(results, keep)

    total = len(runs)
    todo = [r for r in runs if r.key not in done]
    say(f"[ablations] grid {grid.name}: {total} runs, {total - len(todo)} already done, {len(todo)} to run; "
        f"out={out}")
    bar = tqdm(total=total, initial=total - len(todo), desc=grid.name, unit="run", file=sys.stderr,
               dynamic_ncols=True, disable=not sys.stderr.isatty() or log is not None)
    try:  # SIGTERM ends the current run cleanly, like Ctrl-C (only possible in the main thread)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        old_term = None
    failed: list[str] = []
    t_start = time.time()
    durations: list[float] = []
    n_done = total - len(todo)
    rc = 0
    current: RunSpec | None = None
    try:
        for i, r in enumerate(todo):
            if max_runs is not None and i >= max_runs:
                say(f"[ablations] stopping after --max-runs {max_runs}")
                break
            eta = (sum(durations) / len(durations)) * (len(todo) - i) if durations else None
            say(f"[ablations] {n_done}/{total} done" + (f", {len(failed)} failed" if failed else "")
                + f"; now {r.run_id} ({i + 1} of {len(todo)} to run); elapsed {_fmt_dur(time.time() - t_start)}, "
                f"ETA {_fmt_dur(eta)}")
            bar.set_postfix_str(r.run_id)
            current = r
            p = _paths(out, r.run_id)
            if any(p[k].exists() for k in ("console", "txt", "json")):
                dest = archive_attempt(out, r.run_id, "interrupted or failed earlier attempt")
                if dest:
                    say(f"[ablations]   earlier attempt kept as {dest.relative_to(out)}")
            last_beat = [time.time()]

            def status(line: str, verbose_: bool, r=r, last_beat=last_beat) -> None:
                if verbose_:
                    say(f"  {line}")
                elif line.startswith("step:") or line.startswith("final_"):
                    bar.set_postfix_str(f"{r.run_id} {line[:80]}")
                    if not bar.disable:
                        return
                    if time.time() - last_beat[0] > 60 or line.startswith("final_"):
                        last_beat[0] = time.time()
                        say(f"[ablations]   {r.run_id}: {line}")

            t0 = time.time()
            code = run_one(r, out, script_p, grid.nproc, python, verbose, status, timeout=run_timeout)
            dt = time.time() - t0
            js = read_run_json(p["json"])
            if is_complete(js):
                if code != 0:
                    say(f"[ablations]   {r.run_id}: exit status {code} after a complete JSON; keeping the result")
                row = row_from_json(js, r, out, wall_seconds=dt)
                append_result(results, row)
                durations.append(dt)
                n_done += 1
                bar.update(1)
                current = None
                say(f"[ablations]   finished {r.run_id} in {_fmt_dur(dt)}: val_bpb={row['val_bpb']} "
                    f"val_loss={row['val_loss']} steps={row['steps']}")
            else:
                why = (f"timed out after {run_timeout:g} s" if code == RUN_TIMEOUT_STATUS and run_timeout
                       else f"exit status {code}" if code != 0 else "no complete logs/<RUN_ID>.json")
                dest = archive_attempt(out, r.run_id, f"failed: {why}")
                failed.append(r.run_id)
                durations.append(dt)
                say(f"[ablations]   FAILED {r.run_id} ({why}); log kept as "
                    f"{dest.relative_to(out) if dest else '(no output)'}")
            current = None
    except (KeyboardInterrupt, _Interrupted) as e:
        rc = 130
        name = str(e) or "SIGINT"
        msg = f"[ablations] interrupted ({name})"
        if current is not None and not is_complete(read_run_json(_paths(out, current.run_id)["json"])):
            dest = archive_attempt(out, current.run_id, f"interrupted ({name})")
            msg += f" during {current.run_id}; its log kept as {dest.relative_to(out) if dest else '(no output)'}"
        say(msg + "; rerun the same command to resume")
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        bar.close()
    if rc:
        return rc
    remaining = total - n_done
    say(f"[ablations] {n_done}/{total} runs complete, {len(failed)} failed this time"
        + (f" ({', '.join(failed)}); rerun the same command to retry them" if failed else "")
        + f"; results: {results}")
    return 0 if remaining == 0 else 1
