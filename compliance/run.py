"""``python -m compliance run ENTRY``: the dynamic audit of any entry, by running its own evaluation path.

The entry's script runs as ``__main__``, sandboxed (:mod:`compliance.sandbox`), on the CPU shims
(:mod:`compliance.shim`), at a tiny configuration given through the environment variables it reads
(:mod:`compliance.synth`), on synthetic data laid out as it expects. It runs once per validation stream:

* ``base``: the stream;
* ``cut@c``: every token from position c on replaced (each by a different id);
* ``answer@v``: only the last token replaced, by v (several v).

Every per-token score the entry computes on the stream is recorded with the position it scores
(:mod:`compliance.recorder`). Probes, over those records:

* future-suffix invariance: every score of a position before the cut is identical in ``base`` and ``cut@c`` (and in
  every ``answer@v``, cut at the last position);
* self-influence (answer mask): at the last position the probabilities the entry assigned to the substituted targets,
  each in the run where it was the answer, sum to at most 1; and the distribution there does not move with the
  answer;
* score coverage: the val_loss the entry reports equals the mean of the last recorded score of each position, so the
  probes measured what the entry reports (otherwise the unrecorded part, e.g. a mixture computed outside torch, was
  not measured).

Each probe is pass, fail (positions and size of the effect) or could-not-run (the reason).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from compliance import sandbox, synth

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 4
TOL = 1e-6          # nats; runs are single-threaded CPU float32/64 and same-shape, so equal scores are bit-identical
SUM_TOL = 1e-6
ANSWERS = 6         # substituted targets at the last position (besides the original)
PASS, FAIL, NORUN, WARN = "pass", "fail", "could-not-run", "warn"  # warn: reported, not a failure


class RunUsageError(ValueError):
    """Bad arguments or an entry that does not exist: exit status 2."""


def resolve_script(path: Path) -> Path:
    from compliance.source import entry_scripts
    path = Path(path)
    if path.is_file():
        if path.suffix != ".py":
            raise RunUsageError(f"{path} is not a Python script; pass a train_gpt.py or a record folder")
        return path.resolve()
    if path.is_dir():
        scripts = entry_scripts(path)
        if not scripts:
            raise RunUsageError(f"{path} holds no Python script to run")
        return scripts[0].resolve()
    raise RunUsageError(f"no such file or folder: {path}")


_ENV_READ = re.compile(r"""(?:environ\.get|getenv|environ\.setdefault|environ\[)\(?\s*['"]([A-Z][A-Z0-9_]+)['"]""")
# a setting declared as a typed class attribute whose name is the variable's (the kit: `num_layers: int = S(9, ...)`)
_DECLARED = re.compile(r"^[ \t]+([a-z][a-z0-9_]*)[ \t]*:[ \t]*(?:int|float|str|bool)[ \t]*=", re.M)


def env_names(script: Path) -> set[str]:
    """Environment variable names the entry reads (decoding self-extracting wrappers, never executing them)."""
    from compliance.source import load_program
    try:
        units = load_program(script).units
        text = "\n".join(u.text for u in units)
    except Exception:  # noqa: BLE001 - an unreadable script still runs; the names only refine the configuration
        text = script.read_text(errors="replace")
    return set(_ENV_READ.findall(text)) | {n.upper() for n in _DECLARED.findall(text)}


def near_misses(env: dict, names: set[str]) -> dict:
    """The tiny configuration without the spellings the entry does not read but reads a near relative of
    (GPTQ_CALIB_BATCHES where it reads GPTQ_CALIBRATION_BATCHES): an entry may refuse those as typos."""
    import difflib
    return {k: v for k, v in env.items() if k in names or k not in synth.TINY
            or not difflib.get_close_matches(k, names, n=1, cutoff=0.8)}


def plan(ws: dict, answers: int = ANSWERS) -> list[dict]:
    s = ws["stream"]
    n = len(s)
    last = n - 1
    cuts = [n // 8, int(0.45 * n), int(0.8 * n)]
    runs = [{"name": "base", "stream": s}]
    for i, c in enumerate(cuts):
        runs.append({"name": f"cut@{c}", "cut": c, "stream": synth.replace_from(s, c, ws["ordinary"], 100 + i)})
    rng = np.random.default_rng(5)
    pool = [int(v) for v in ws["ordinary"] if v != s[last]]
    for v in rng.choice(pool, size=answers, replace=False):
        t = s.copy()
        t[last] = int(v)
        runs.append({"name": f"answer@{int(v)}", "cut": last, "answer": int(v), "stream": t})
    for r in runs:
        r["watch"] = [last]
    return runs


# ---------------------------------------------------------------------------------------------------------------
# Probes over the recorded scores


def _by_pos(scores: dict) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for p, v in zip(scores["pos"], scores["val"]):
        out.setdefault(int(p), []).append(float(v))
    return out


def _checked(scores: dict, cut: int) -> dict[tuple[int, int, int], float]:
    """The scores of positions before ``cut`` that must not depend on the tokens from ``cut`` on, keyed by
    (pass, position, how many times the position was scored before in the pass).

    A pass starts with a call that scores position 1 (every evaluation sweeps from the start). In a pass the first
    score of each position is always checked; a later one (a sliding window recomputing a position it does not
    keep) only until the pass has scored a position at or after the cut: after that a legal score-first entry may
    have trained on those tokens, and what it recomputes and throws away may differ."""
    out: dict[tuple[int, int, int], float] = {}
    calls: dict[int, list[tuple[int, float]]] = {}
    for p, v, c in zip(scores["pos"], scores["val"], scores.get("call") or [0] * len(scores["pos"])):
        calls.setdefault(int(c), []).append((int(p), float(v)))
    npass, counts, past_cut = -1, {}, False
    for c in sorted(calls):
        items = calls[c]
        if npass < 0 or any(p == 1 for p, _ in items):
            npass, counts, past_cut = npass + 1, {}, False
        for p, v in items:
            if p >= cut:
                continue
            k = counts.get(p, 0)
            counts[p] = k + 1
            if k == 0 or not past_cut:
                out[(npass, p, k)] = v
        past_cut = past_cut or any(p >= cut for p, _ in items)
    return out


def future_suffix(base: dict, others: list[tuple[int, dict, str]]) -> dict:
    """Scores before each cut must be identical to the base run's."""
    name = "future-suffix invariance"
    if not base["pos"]:
        return {"probe": name, "status": NORUN,
                "detail": "the entry computed no per-token score of a validation token that could be recorded "
                          "(no F.cross_entropy / nll_loss / log_softmax-gather on the validation stream)"}
    bad, worst, compared, missing = [], 0.0, 0, []
    for cut, run, rname in others:
        a, b = _checked(base, cut), _checked(run, cut)
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                if key[2] == 0:
                    missing.append((rname, key[1], key in a))
                continue
            compared += 1
            d = abs(a[key] - b[key])
            if not d <= TOL:
                bad.append((rname, key[1], d))
            worst = max(worst, d if d == d else math.inf)
    cuts = sorted({c for c, _, _ in others})
    if bad or missing:
        parts = []
        if bad:
            first = sorted(bad, key=lambda t: t[1])[:5]
            parts.append(f"{len(bad)} score(s) before the cut changed with the tokens after it, by up to "
                         f"{worst:.3g} nats; first: " + ", ".join(f"position {p} in {n} (by {d:.3g})"
                                                                for n, p, d in first))
        if missing:
            n, p, in_base = missing[0]
            parts.append(f"{len(missing)} position(s) before the cut scored in one run and not the other (first: "
                         f"position {p}, {'only in base' if in_base else 'only in ' + n})")
        return {"probe": name, "status": FAIL, "detail": "; ".join(parts), "effect": worst,
                "positions": sorted({p for _, p, _ in bad} | {p for _, p, _ in missing})[:50]}
    return {"probe": name, "status": PASS, "effect": worst,
            "detail": f"cuts {cuts}: {compared} scores of positions before the cut compared over {len(others)} "
                      f"runs, all identical" + ("" if worst == 0 else f" within {worst:.2g}")}


def self_influence(runs: list[tuple[int, dict]], last: int) -> list[dict]:
    """At the last position, Σ_v p(v | v is the answer) <= 1, and the distribution there does not move."""
    vals, rows = {}, {}
    for v, sc in runs:
        pv = _by_pos(sc).get(last, [])
        vals[v] = pv
        rows[v] = [np.asarray(r) for r in sc["rows"].get(str(last), [])]
    counts = {len(x) for x in vals.values()}
    if counts == {0}:
        return [{"probe": "self-influence (answer mask)", "status": NORUN,
                 "detail": f"the last position ({last}) was never scored by a recorded call"}]
    if len(counts) != 1:
        return [{"probe": "self-influence (answer mask)", "status": FAIL,
                 "detail": f"the last position was scored a different number of times depending on its own token "
                           f"({sorted(counts)})"}]
    k = counts.pop()
    out = []
    sums = [sum(math.exp(-vals[v][e]) for v in vals) for e in range(k)]
    worst = max(sums)
    status = PASS if worst <= 1 + SUM_TOL else FAIL
    detail = (f"{len(vals)} targets at position {last}, each scored in the run where it is the answer: "
              f"sum of their probabilities {', '.join(f'{x:.6f}' for x in sums)} (one per evaluation; must be <= 1)")
    v0 = runs[0][0]
    if rows[v0] and all(len(rows[v]) == k for v in rows):
        moved = max(float(np.abs(rows[v][e] - rows[v0][e]).max()) for v in rows for e in range(k))
        est = []
        for e in range(k):
            p0 = np.exp(rows[v0][e])
            tot = float(p0.sum()) + sum(math.exp(-vals[v][e]) - float(p0[v]) for v in vals)
            est.append(tot)
        detail += (f"; the distribution at the position moves by up to {moved:.3g} (log-prob) with the answer; "
                   f"estimated sum over the whole vocabulary {', '.join(f'{x:.6f}' for x in est)}")
        if moved > TOL:
            status = FAIL
    out.append({"probe": "self-influence (answer mask)", "status": status, "detail": detail, "effect": worst})
    return out


def _fit(rec_b: list[float], answers: list[tuple[list[float], float]], loss0: float, dec: int, last: int):
    """The run of consecutive recorded scores of the last position whose summed change the reported val_loss
    follows: (misfit, tolerance, weight, first, count, weights) or None. Of the runs that fit (misfit <= 0) the one
    whose weight is nearest 1/n (a plain mean) is taken: when an evaluation scores the position in several windows
    with the same context, one of them fits as well as their sum."""
    fits, best = [], None
    n = len(rec_b)
    for i in range(n):
        for j in range(i + 1, n + 1):
            weights, slack = [], []
            for rec_v, rep in answers:
                d_rec = sum(rec_v[i:j]) - sum(rec_b[i:j])
                if abs(d_rec) < 1e-6:
                    continue
                weights.append((rep[0] - loss0) / d_rec * last)   # weight of one scoring of it, in units of 1/n
                slack.append(2 * last * 10.0 ** -min(rep[1], dec) / abs(d_rec) + 0.01)
            if len(weights) < 2:
                continue
            tol = max(slack)
            w = sum(weights) / len(weights)
            cand = (max(weights) - min(weights) - 2 * tol, tol, w, i, j - i, weights)
            if cand[0] <= 0 and w > 0:
                fits.append(cand)
            if best is None or cand[0] < best[0] - 1e-9:
                best = cand
    return min(fits, key=lambda c: abs(math.log(c[2]))) if fits else best


def coverage(base: dict, answers: list[tuple[dict, tuple | None]], reported: tuple | None, last: int) -> list[dict]:
    """Is the reported score made of the recorded ones, and is the last target counted once?

    Across the ``answer@v`` runs only the last position's scores may change (future-suffix invariance covers the
    rest), so the reported val_loss must move by w * (the summed change of some consecutive recorded scores of the
    last position: one evaluation's), with one weight w for every v: then the probes measured what the entry reports
    (``score coverage``). A mean over the n targets, each scored once, sums one score with w = 1/n (``scored once``).
    ``reported``: (val_loss, decimals printed) of the base run's final score line; ``answers``: (run result, its
    (val_loss, decimals))."""
    cov, once = "score coverage", "scored once"

    def both(status, why):
        return [{"probe": cov, "status": status, "detail": why}, {"probe": once, "status": NORUN, "detail": why}]

    if reported is None:
        return both(NORUN, "the run printed no val_loss that could be read, so the reported score cannot be tied "
                           "to the recorded one")
    b = _by_pos(base)
    loss0, dec = reported
    rec_b = b.get(last, [])
    unscored = [p for p in range(1, last + 1) if p not in b]
    pairs = []
    for run, rep in answers:
        rec_v = _by_pos(run["scores"]).get(last, [])
        if rep is None or len(rec_v) != len(rec_b):
            return both(NORUN, f"run {run['name']} printed no val_loss" if rep is None else
                        f"position {last} was scored {len(rec_v)} times in {run['name']}, {len(rec_b)} in base")
        pairs.append((rec_v, rep))
    best = _fit(rec_b, pairs, loss0, dec, last)
    if best is None:
        return both(NORUN, f"fewer than 2 answer runs changed a recorded score of position {last}")
    misfit, tol, w, first, count, weights = best
    which = f"recorded score #{first + 1}" if count == 1 else f"the sum of recorded scores #{first + 1}-{first + count}"
    lead = (f"reported val_loss {loss0:.{dec}f}; over {len(weights)} answer runs it moves with {which} of position "
            f"{last} with weight {w:.4g}/{last} (+-{tol:.2g})")
    if tol > 0.5:
        return both(NORUN, f"{lead}: the log prints val_loss with {dec} decimals, too few to tie the reported score "
                           "to a recorded one")
    if misfit > 0 or unscored:
        why = (f"the reported score does not follow the recorded ones (weights {min(weights):.4g}.."
               f"{max(weights):.4g}/{last})" if misfit > 0 else
               f"{len(unscored)} target position(s) never scored by a recorded call (first: {unscored[:5]})")
        return both(NORUN, f"{lead}; {why}: part of the reported score is computed outside the recorded calls (e.g. "
                           "a mixture in numpy, scoring inside a training forward) and was not measured")
    out = [{"probe": cov, "status": PASS, "detail": lead + ": the probes measured the reported score"}]
    if count == 1 and abs(w - 1) <= tol:
        out.append({"probe": once, "status": PASS, "detail": f"the last target weighs {w:.4f}/{last} in the "
                                                            "reported mean: counted once"})
    elif count > 1:  # accounting, not causality: no future information enters a score, so a warning
        out.append({"probe": once, "status": WARN, "effect": float(count),
                    "detail": f"the last target is counted {count} times in the reported score (one evaluation "
                              f"scores it in {count} windows; the mean is over about {last / w:.0f} scores "
                              f"of {last} targets)"})
    else:
        out.append({"probe": once, "status": WARN, "effect": w,
                    "detail": f"the last target weighs {w:.3f}/{last} in the reported mean instead of 1/{last}: "
                              f"the mean is over about {last / w:.0f} scores of {last} targets "
                              + ("(targets left out)" if w > 1 else "(some counted more than once)")})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Running


def _reported(log: str):
    """(val_loss, decimals printed) of the last score line of a run's output (its `_exact` twin when the line has
    one), or None."""
    from compliance.logparse import parse_text_log
    run = parse_text_log(log)
    if not run.scores:
        return None
    sc = run.scores[-1]
    twin = [x for x in run.scores if x.exact and x.metric.replace("_exact", "") == sc.metric.replace("_exact", "")]
    sc = twin[-1] if twin else sc
    line = run.lines[sc.line - 1] if 0 < sc.line <= len(run.lines) else ""
    m = re.search(r"val_loss[:=\s]+-?\d+\.(\d+)", line)
    return float(sc.val_loss), len(m.group(1)) if m else 4


def _blocker(res: dict) -> str:
    f = res.get("failure") or {}
    msg = f.get("message", "")
    where = f" at {f['where']}" if f.get("where") else ""
    if f.get("kind") == "missing-module":
        return f"needs the module `{f.get('module') or msg}`, which is not installed{where}"
    if f.get("kind") == "syntax":
        hint = ""
        if "f-string" in msg and sys.version_info < (3, 12):
            hint = f"; nested quotes in f-strings need Python >= 3.12 (PEP 701), this is {sys.version.split()[0]}"
        return f"the script does not parse on this Python ({msg}){where}{hint}"
    return f"{msg}{where}"


def _prepare(tmp: Path, runs: list[dict]) -> None:
    shutil.rmtree(tmp / "runs", ignore_errors=True)
    (tmp / "runs").mkdir()
    for r in runs:
        (tmp / "runs" / r["name"]).mkdir()
        (tmp / "runs" / r["name"] / "data").symlink_to(tmp / "data")


def _next_attempt(f: dict, state: dict) -> str | None:
    """What to change after the first run failed with ``f`` (a note), or None to stop."""
    msg = f.get("message", "")
    if f.get("kind") == "missing-module" and (f.get("module") or "").split(".")[0] == "triton" \
            and state["triton"] == "missing":
        state["triton"] = "refuse"
        return "Triton is stubbed: kernels are defined but refuse to launch"
    if f.get("kind") == "refused" and state["triton"] == "refuse" and "ITERATIONS" not in state["extra"]:
        state["extra"]["ITERATIONS"] = "0"
        return f"training skipped (ITERATIONS=0): {msg}; validation data in training is not measured"
    if state["float32"] and re.search(r"dtype|scalar type|BFloat16|Half", msg):
        state["float32"] = False
        return ("half precision kept: bfloat16/float16 weights as the entry asks and CUDA autocast as bfloat16 CPU "
                "autocast (the entry mixes dtypes)")
    return None


def _execute(tmp: Path, script: Path, ws: dict, env: dict, runs: list[dict], limits: sandbox.Limits, report: dict,
             progress, shown: set) -> dict | None:
    """Run the worker, retrying with other shims when the first run shows they are needed; None when blocked.
    ``shown``: the settings reported (those the entry reads, and the user's)."""
    state = {"triton": "missing", "float32": True, "extra": {}}
    result = None
    for attempt in range(1, 5):
        spec = {"tmp": str(tmp), "script": str(tmp / "entry" / script.name),
                "val_paths": [str(p) for p in ws["val_paths"]], "env": {**env, **state["extra"]},
                "triton": state["triton"], "float32": state["float32"], "limits": limits.__dict__,
                "runs": [{**r, "stream": [int(x) for x in r["stream"]]} for r in runs]}
        _prepare(tmp, runs)
        (tmp / "spec.json").write_text(json.dumps(spec))
        if progress:
            progress(f"{report['entry']}: running ({len(runs)} runs, attempt {attempt})")
        rc, timed_out = sandbox.spawn(tmp, tmp / "spec.json", limits, tmp / "worker.log")
        if rc == sandbox.REFUSED:
            report["blocked"] = "sandbox: " + (tmp / "worker.log").read_text(errors="replace").strip()[-400:]
            return None
        rfile = tmp / "result.json"
        result = json.loads(rfile.read_text()) if rfile.is_file() else {"runs": []}
        if rfile.is_file():
            rfile.rename(tmp / f"result.{attempt}.json")
        report["env"] = {k: v for k, v in spec["env"].items() if k in shown}
        if timed_out:
            report["blocked"] = f"the runs exceeded the wall-clock limit of {limits.wall_s:.0f} s"
            return None
        if rc != 0 and (not result["runs"] or result["runs"][-1]["status"] == "ok"):
            tail = (tmp / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
            report["blocked"] = (f"the worker died with status {rc} (limits: CPU {limits.cpu_s} s, memory "
                                 f"{limits.memory_bytes >> 30} GiB): {' | '.join(tail)[-300:]}")
            return None
        first = result["runs"][0] if result["runs"] else None
        note = _next_attempt(first.get("failure") or {}, state) if first and first["status"] != "ok" else None
        if note is None:
            return result
        report["notes"].append(note)
    return result


def audit(entry: Path, settings: dict | None = None, limits: sandbox.Limits | None = None,
          answers: int = ANSWERS, keep: Path | None = None, progress=None) -> dict:
    """Run the dynamic audit of one entry; returns a JSON-able report with a verdict and per-probe results."""
    script = resolve_script(entry)
    limits = limits or sandbox.Limits()
    report = {"entry": str(entry), "script": script.name, "verdict": "incomplete", "probes": [], "notes": []}
    if script.stat().st_size == 0:
        report["blocked"] = f"{script.name} is empty"
        return report
    names = env_names(script)
    user = dict(settings or {})
    tmp = Path(tempfile.mkdtemp(prefix="compliance-run-"))
    try:
        ws = synth.workspace(tmp, script.parent)
        runs = plan(ws, answers)
        env = near_misses(synth.tiny_env(ws, tmp, {}), names)
        env.update({n: "0" for n in names if "FUSED" in n or "TRITON" in n})
        env.update(user)
        result = _execute(tmp, script, ws, env, runs, limits, report, progress, names | set(user))
        if result is None:
            return report
        report["runs"] = [{"name": r["name"], "status": r["status"], "seconds": r["seconds"],
                           "score_calls": r["scores"]["score_calls"], "trained_calls": r["scores"]["trained_calls"]}
                          for r in result["runs"]]
        bad = [r for r in result["runs"] if r["status"] != "ok"]
        if bad:
            report["blocked"] = f"run {bad[0]['name']} failed: {_blocker(bad[0])}"
            report["failure_trace"] = (bad[0].get("failure") or {}).get("trace", "")[-2000:]
            return report
        report["probes"] = probes(result["runs"], runs, len(ws["stream"]))
        for p in report["probes"]:
            if "effect" in p and not math.isfinite(p["effect"]):
                p["effect"] = None     # NaN or infinite: the detail says so; the report stays strict JSON
        st = {p["status"] for p in report["probes"]}
        report["verdict"] = "fail" if FAIL in st else ("pass" if st <= {PASS, WARN} else "incomplete")
        return report
    finally:
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(tmp, keep, symlinks=True)
        shutil.rmtree(tmp, ignore_errors=True)


def probes(results: list[dict], runs: list[dict], n: int) -> list[dict]:
    by = {r["name"]: r["scores"] for r in results}
    base = by["base"]
    others = [(r["cut"], by[r["name"]], r["name"]) for r in runs if "cut" in r]
    out = [future_suffix(base, others)]
    last = n - 1
    ans = [(int(runs[0]["stream"][last]), base)] + [(r["answer"], by[r["name"]]) for r in runs if "answer" in r]
    out += self_influence(ans, last)
    reported = {r["name"]: _reported(r["log"]) for r in results}
    answers = [(next(x for x in results if x["name"] == r["name"]), reported[r["name"]]) for r in runs
               if "answer" in r]
    out += coverage(base, answers, reported["base"], last)
    return out


def exit_code(report: dict) -> int:
    return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(report["verdict"], EXIT_INCOMPLETE)


def to_text(report: dict) -> str:
    out = [f"compliance run: {report['entry']} ({report['script']})", f"verdict: {report['verdict'].upper()}"]
    if report.get("blocked"):
        out.append(f"could not run: {report['blocked']}")
    for n in report.get("notes", []):
        out.append(f"note: {n}")
    if report.get("runs"):
        secs = sum(r["seconds"] for r in report["runs"])
        out.append(f"runs: {len(report['runs'])} ({secs:.0f} s), scoring calls recorded per run: "
                   f"{report['runs'][0]['score_calls']}")
    w = max((len(p["probe"]) for p in report.get("probes", [])), default=10)
    for p in report.get("probes", []):
        out.append(f"  {p['probe']:<{w}}  {p['status']:<13}  {p['detail']}")
    return "\n".join(out)
