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
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ablations.grid import MATCH_KEY, Grid, GridError, RunSpec, load_grid
from kitlib import procs
from kitlib.fileio import unwritable, write_text_atomic
from kitlib.scripts import ScriptError, load_script

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
    """Import train_gpt.py by path (its main() only runs under __main__); RunnerError with one line if it fails."""
    try:
        return load_script(script)
    except ScriptError as e:
        raise RunnerError(f"training script: {e}") from None


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
    """The env names the script reads: the kit's SETTINGS names and their ALIASES; for another script, the keys of
    Hyperparameters.from_env({}).as_dict(); None when the script says nothing about its settings."""
    settings = getattr(mod, "SETTINGS", None)
    if settings:
        return {s.name for s in settings} | set(getattr(mod, "ALIASES", {}) or {})
    hp = getattr(mod, "Hyperparameters", None)
    try:
        names = {k for k in hp.from_env({}).as_dict() if isinstance(k, str)}
    except Exception:  # noqa: BLE001 - a script without from_env/as_dict says nothing
        return None
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

def parse_results(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The whole rows of results.csv (each with its line number under "_line"), and one note per line that is not
    a whole row: cut off (no end of line), the wrong number of fields (a cut row glued to the next), unreadable.
    The header must name a run_id column; a file without one gives no rows and one note."""
    if not path.is_file():
        return [], []
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    try:
        header = next(csv.reader([lines[0].rstrip("\r")]), [])
    except csv.Error:
        header = []
    if "run_id" not in header:
        return [], [f"line 1 is not the header of a results file (no run_id column); the file is ignored"]
    notes, rows = [], []
    if lines[-1].strip():
        notes.append(f"line {len(lines)}: cut off (no end of line)")
    for i, line in enumerate(lines[1:-1], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            cells = next(csv.reader([line]))
        except csv.Error as e:
            notes.append(f"line {i}: unreadable ({e})")
            continue
        if len(cells) != len(header):
            notes.append(f"line {i}: {len(cells)} fields where the header has {len(header)}")
            continue
        rows.append({**dict(zip(header, cells)), "_line": str(i)})
    return rows, notes


def read_results(path: Path) -> list[dict[str, str]]:
    """The whole rows of results.csv (see parse_results)."""
    return [{k: v for k, v in r.items() if k != "_line"} for r in parse_results(path)[0]]


def write_results(path: Path, rows: list[dict[str, str]]) -> None:
    """results.csv with the current columns, written whole or not at all (temporary file, then rename)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in RESULT_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def append_result(path: Path, row: dict) -> None:
    """Add one row: the file is rewritten whole (a run takes minutes; the file holds one line per run)."""
    write_results(path, read_results(path) + [row])


def _safe_run_id(rid: str) -> bool:
    return bool(rid) and rid not in (".", "..") and "/" not in rid and "\\" not in rid and "\x00" not in rid


def verify_row(row: dict[str, str], spec: RunSpec | None, out: Path) -> str | None:
    """Why a results row cannot be trusted, or None: it must be the planned run's (run_id), complete, with a finite
    val_bpb equal to the one its run's logs/<RUN_ID>.json gives."""
    rid = row.get("run_id", "")
    if spec is not None and rid != spec.run_id:
        return f"run_id {rid!r} is not the planned {spec.run_id!r}"
    if not _safe_run_id(rid):
        return f"run_id {rid!r} is not a run name"
    if row.get("status") != "complete":
        return f"status {row.get('status')!r} is not 'complete'"
    try:
        bpb = float(row.get("val_bpb", ""))
    except ValueError:
        return f"val_bpb {row.get('val_bpb')!r} is not a number"
    if not math.isfinite(bpb):
        return f"val_bpb {bpb} is not finite"
    js = read_run_json(_paths(out, rid)["json"])
    if not is_complete(js):
        return f"logs/{rid}.json is missing or incomplete"
    dummy = spec or RunSpec(row.get("group", ""), row.get("config", ""), 0, rid, {})
    want = row_from_json(js, dummy, out)["val_bpb"]
    if want is None or float(want) != bpb:
        return f"val_bpb {bpb!r}, but logs/{rid}.json says {want!r}"
    return None


def resume_results(path: Path, runs: list[RunSpec], out: Path, say) -> set[tuple[str, str, str]]:
    """Verify every row of results.csv before resuming: rows that are cut off, glued together, repeated, not the
    planned run's, or that disagree with their run's JSON are dropped; a complete run's JSON without a verified row
    gives its row back. The file is rewritten (atomically) when anything changed. Returns the finished runs' keys."""
    rows, notes = parse_results(path)
    planned = {r.key: r for r in runs}
    good: dict[tuple[str, str, str], dict] = {}
    for row in rows:
        key = (row.get("group", ""), row.get("config", ""), row.get("seed", ""))
        why = verify_row(row, planned.get(key), out)
        if why is None and key in good:
            why = "a second row for the same run"
        if why:
            notes.append(f"line {row['_line']} ({row.get('run_id', '?')}): {why}")
        else:
            good[key] = row
    recovered = 0
    for r in runs:
        js = read_run_json(_paths(out, r.run_id)["json"])
        if r.key not in good and is_complete(js):
            good[r.key] = row_from_json(js, r, out)
            recovered += 1
    header = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace").strip() if path.is_file() else ""
    if notes or recovered or (path.is_file() and header != ",".join(RESULT_COLUMNS)):
        for n in notes:
            say(f"[ablations] {path.name} {n}: dropped (the run's row comes back from its JSON, or it reruns)")
        if recovered:
            say(f"[ablations] {recovered} complete run(s) without a verified row: rows recovered from their JSON")
        write_results(path, list(good.values()))
    return set(good) & set(planned)


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
        if s or f"{prefix}_val_bpb" not in row:  # (two names share a column: the one present wins)
            row[f"{prefix}_val_bpb"], row[f"{prefix}_val_loss"] = s.get("val_bpb"), s.get("val_loss")
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
    cmd = procs.script_command(script, nproc, python)
    with p["console"].open("w", encoding="utf-8") as con:
        con.write(f"# ablations: cwd={out} cmd={' '.join(cmd)}\n")
        con.write(f"# ablations: env {json.dumps({**run.env, 'RUN_ID': run.run_id, 'SEED': str(run.seed)}, sort_keys=True)}\n")
        con.flush()
        proc = procs.start(cmd, cwd=out, env=env)
        try:
            with procs.Deadline(proc, timeout, grace=15.0) as deadline:
                for line in proc.stdout:
                    con.write(line)
                    con.flush()
                    status(line.rstrip("\n"), verbose)
                code = proc.wait()
        except BaseException:
            procs.stop(proc)
            raise
        if deadline.expired:
            con.write(f"\n# ablations: ended after the per-run timeout of {timeout:g} s\n")
            return RUN_TIMEOUT_STATUS
        return code


def last_words(console: Path) -> str:
    """The line of a run's console that says why it failed: its last `error:` / exception line, else its last line."""
    try:
        lines = [x.strip() for x in console.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [x for x in lines if x and not x.startswith("# ablations:")]
    for line in reversed(lines):
        if line.lower().startswith("error") or "Error:" in line or "Exception:" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


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


def check_python(python: str) -> str:
    """The interpreter for the runs, as a path; RunnerError (one line) when it is not there or is no Python 3."""
    exe = shutil.which(python)
    if exe is None:
        raise RunnerError(f"--python {python}: no such executable (give the path of a Python 3 interpreter)")
    try:
        proc = subprocess.run([exe, "-c", "import sys; print(sys.version_info[0])"], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RunnerError(f"--python {python} does not run: {e}") from None
    if proc.returncode != 0 or proc.stdout.strip() != "3":
        raise RunnerError(f"--python {python} is not a Python 3 interpreter")
    return exe


def check_configs(runs: list[RunSpec], mod, nproc: int) -> None:
    """Every run's configuration through the script's own check (``check_config(Hyperparameters.from_env(env),
    world_size)``, when it has one) before any run starts: a grid the script refuses fails here, in one line,
    instead of in every run."""
    hp, check = getattr(mod, "Hyperparameters", None), getattr(mod, "check_config", None)
    if hp is None or not hasattr(hp, "from_env") or check is None:
        return
    for r in runs:
        env = {**os.environ, **r.env, "RUN_ID": r.run_id, "SEED": str(r.seed)}
        try:
            check(hp.from_env(env), nproc)
        except Exception as e:  # noqa: BLE001 - the script's own message, as one line
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RunnerError(f"{r.run_id} (nproc {nproc}): the training script refuses this configuration: "
                              f"{first}") from None


def prepare(grid: Grid, out: Path, script_p: Path, python: str, dry_run: bool, allow_unknown: bool,
            say) -> list[RunSpec]:
    """Every check before any work: the script, the interpreter, the output folder, every run's settings and
    configuration. Returns the runs with matched widths resolved."""
    runs = grid.runs()
    if not dry_run:
        if not script_p.is_file():
            raise RunnerError(f"training script not found: {script_p}")
        why = unwritable(out, folder=True)
        if why:
            raise RunnerError(f"--out {out}: {why}")
        check_python(python)
    mod = import_script(script_p) if script_p.is_file() else None
    resolve_matches(grid, runs, script_p if mod else None, log=say, mod=mod)
    if mod is not None:
        if not allow_unknown:
            check_settings(grid, runs, mod)
        check_configs(runs, mod, grid.nproc)
    return runs


def _attempt(r: RunSpec, out: Path, script_p: Path, grid: Grid, python: str, verbose: bool,
             run_timeout: float | None, say, bar) -> bool:
    """One attempt at run `r`: earlier attempts archived, the run, its row appended (True) or its console kept as
    failed-N with a FAILED line that says why (False)."""
    p = _paths(out, r.run_id)
    if any(p[k].exists() for k in ("console", "txt", "json")):
        dest = archive_attempt(out, r.run_id, "interrupted or failed earlier attempt")
        if dest:
            say(f"[ablations]   earlier attempt kept as {dest.relative_to(out)}")
    last_beat = [time.time()]

    def status(line: str, verbose_: bool) -> None:
        if verbose_:
            say(f"  {line}")
        elif line.startswith("step:") or line.startswith("final_"):
            bar.set_postfix_str(f"{r.run_id} {line[:80]}")
            if bar.disable and (time.time() - last_beat[0] > 60 or line.startswith("final_")):
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
        append_result(out / "results.csv", row)
        say(f"[ablations]   finished {r.run_id} in {_fmt_dur(dt)}: val_bpb={row['val_bpb']} "
            f"val_loss={row['val_loss']} steps={row['steps']}")
        return True
    timed_out = code == RUN_TIMEOUT_STATUS and run_timeout
    why = (f"timed out after {run_timeout:g} s" if timed_out
           else f"exit status {code}" if code != 0 else "no complete logs/<RUN_ID>.json")
    words = "" if timed_out else last_words(p["console"])
    dest = archive_attempt(out, r.run_id, f"failed: {why}")
    say(f"[ablations]   FAILED {r.run_id} ({why}{': ' + words if words else ''}); log kept as "
        f"{dest.relative_to(out) if dest else '(no output)'}")
    return False


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
    if max_runs is not None and max_runs < 1:
        raise RunnerError(f"--max-runs {max_runs} must be at least 1")
    if run_timeout is not None and not (math.isfinite(run_timeout) and run_timeout > 0):
        raise RunnerError(f"--timeout {run_timeout} must be a positive number of seconds")
    runs = prepare(grid, out, script_p, python, dry_run, allow_unknown, say)
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
    done = resume_results(out / "results.csv", runs, out, say)
    total, todo = len(runs), [r for r in runs if r.key not in done]
    say(f"[ablations] grid {grid.name}: {total} runs, {total - len(todo)} already done, {len(todo)} to run; "
        f"out={out}")
    bar = tqdm(total=total, initial=total - len(todo), desc=grid.name, unit="run", file=sys.stderr,
               dynamic_ncols=True, disable=not sys.stderr.isatty() or log is not None)
    try:  # SIGTERM ends the current run cleanly, like Ctrl-C (only possible in the main thread)
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        old_term = None
    failed, durations, t_start, n_done = [], [], time.time(), total - len(todo)
    current: RunSpec | None = None
    try:
        for i, current in enumerate(todo):
            if max_runs is not None and i >= max_runs:
                say(f"[ablations] stopping after --max-runs {max_runs}")
                break
            eta = (sum(durations) / len(durations)) * (len(todo) - i) if durations else None
            say(f"[ablations] {n_done}/{total} done" + (f", {len(failed)} failed" if failed else "")
                + f"; now {current.run_id} ({i + 1} of {len(todo)} to run); elapsed "
                f"{_fmt_dur(time.time() - t_start)}, ETA {_fmt_dur(eta)}")
            bar.set_postfix_str(current.run_id)
            t0 = time.time()
            ok = _attempt(current, out, script_p, grid, python, verbose, run_timeout, say, bar)
            durations.append(time.time() - t0)
            if ok:
                n_done += 1
                bar.update(1)
            else:
                failed.append(current.run_id)
            current = None
    except (KeyboardInterrupt, _Interrupted) as e:
        name = str(e) or "SIGINT"
        msg = f"[ablations] interrupted ({name})"
        if current is not None and not is_complete(read_run_json(_paths(out, current.run_id)["json"])):
            dest = archive_attempt(out, current.run_id, f"interrupted ({name})")
            msg += f" during {current.run_id}; its log kept as {dest.relative_to(out) if dest else '(no output)'}"
        say(msg + "; rerun the same command to resume")
        return 130
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        bar.close()
    say(f"[ablations] {n_done}/{total} runs complete, {len(failed)} failed this time"
        + (f" ({', '.join(failed)}); rerun the same command to retry them" if failed else "")
        + f"; results: {out / 'results.csv'}")
    return 0 if n_done == total else 1
