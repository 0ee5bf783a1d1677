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
PASS, FAIL, NORUN = "pass", "fail", "could-not-run"


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


def env_names(script: Path) -> set[str]:
    """Environment variable names the entry reads (decoding self-extracting wrappers, never executing them)."""
    from compliance.source import load_program
    try:
        units = load_program(script).units
        text = "\n".join(u.text for u in units)
    except Exception:  # noqa: BLE001 - an unreadable script still runs; the names only refine the configuration
        text = script.read_text(errors="replace")
    return set(_ENV_READ.findall(text))


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


def coverage(base: dict, answers: list[tuple[dict, tuple | None]], reported: tuple | None, last: int) -> list[dict]:
    """Is the reported score made of the recorded ones, and is the last target counted once?

    Across the ``answer@v`` runs only the last position's score may change (future-suffix invariance covers the
    rest), so the reported val_loss must move by w * (change of one of its recorded scores), with one weight w for
    every v: then the probes measured what the entry reports (``score coverage``). A mean over the n targets, each
    scored once, has w = 1/n (``scored once``). ``reported``: (val_loss, decimals printed) of the base run's final
    score line; ``answers``: (run result, its (val_loss, decimals))."""
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
    best = None
    for k in range(len(rec_b)):
        weights, slack = [], []
        for run, rep in answers:
            rec_v = _by_pos(run["scores"]).get(last, [])
            if rep is None or len(rec_v) != len(rec_b):
                return both(NORUN, f"run {run['name']} printed no val_loss" if rep is None else
                            f"position {last} was scored {len(rec_v)} times in {run['name']}, {len(rec_b)} in base")
            d_rec = rec_v[k] - rec_b[k]
            if abs(d_rec) < 1e-6:
                continue
            weights.append((rep[0] - loss0) / d_rec * last)      # the last target's weight, in units of 1/n
            slack.append(2 * last * 10.0 ** -min(rep[1], dec) / abs(d_rec) + 0.01)
        if weights:
            spread, tol = max(weights) - min(weights), max(slack)
            if best is None or spread - 2 * tol < best[0] - 2 * best[1]:
                best = (spread, tol, sum(weights) / len(weights), k, len(weights), weights)
    if best is None:
        return both(NORUN, f"position {last} has no recorded score that changes with its token")
    spread, tol, w, k, m, weights = best
    lead = (f"reported val_loss {loss0:.{dec}f}; over {m} answer run(s) it moves with recorded score #{k + 1} of "
            f"position {last} with weight {w:.4g}/{last} (+-{tol:.2g})")
    if tol > 0.5:
        return both(NORUN, f"{lead}: the log prints val_loss with {dec} decimals, too few to tie the reported score "
                           "to a recorded one")
    if spread > 2 * tol or unscored:
        why = (f"the reported score does not follow any recorded one (weights {min(weights):.4g}..{max(weights):.4g}"
               f"/{last})" if spread > 2 * tol else
               f"{len(unscored)} target position(s) never scored by a recorded call (first: {unscored[:5]})")
        return both(NORUN, f"{lead}; {why}: part of the reported score is computed outside the recorded calls (e.g. "
                           "a mixture in numpy, scoring inside a training forward) and was not measured")
    out = [{"probe": cov, "status": PASS, "detail": lead + ": the probes measured the reported score"}]
    if abs(w - 1) <= tol:
        out.append({"probe": once, "status": PASS, "detail": f"the last target weighs {w:.4f}/{last} in the "
                                                            "reported mean: counted once"})
    else:
        out.append({"probe": once, "status": FAIL, "effect": w,
                    "detail": f"the last target weighs {w:.3f}/{last} in the reported mean instead of 1/{last}: "
                              f"counted about {w:.2g} times (the end of the stream is scored more than once, or the "
                              "mean is over a different number of targets)"})
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


def audit(entry: Path, settings: dict | None = None, limits: sandbox.Limits | None = None,
          answers: int = ANSWERS, keep: Path | None = None, progress=None) -> dict:
    """Run the dynamic audit of one entry; returns a JSON-able report with a verdict and per-probe results."""
    script = resolve_script(entry)
    limits = limits or sandbox.Limits()
    names = env_names(script)
    user = dict(settings or {})
    tmp = Path(tempfile.mkdtemp(prefix="compliance-run-"))
    report = {"entry": str(entry), "script": script.name, "verdict": "incomplete", "probes": [], "notes": []}
    try:
        ws = synth.workspace(tmp, script.parent)
        runs = plan(ws, answers)
        env = synth.tiny_env(ws, tmp, {})
        for name in names:
            if ("FUSED" in name or "TRITON" in name) and name not in user:
                env[name] = "0"
        env.update(user)
        attempts = [("missing", {}), ("refuse", {}), ("refuse", {"ITERATIONS": "0"})]
        result, note = None, []
        for i, (triton, extra) in enumerate(attempts):
            spec = {"tmp": str(tmp), "script": str(tmp / "entry" / script.name), "val_path": str(ws["val_path"]),
                    "env": {**env, **extra}, "triton": triton, "limits": limits.__dict__,
                    "runs": [{**r, "stream": [int(x) for x in r["stream"]]} for r in runs]}
            for d in (tmp / "runs",):
                shutil.rmtree(d, ignore_errors=True)
            (tmp / "runs").mkdir()
            for r in runs:
                (tmp / "runs" / r["name"]).mkdir()
                (tmp / "runs" / r["name"] / "data").symlink_to(tmp / "data")
            (tmp / "spec.json").write_text(json.dumps(spec))
            if progress:
                progress(f"{entry}: running ({len(runs)} runs, attempt {i + 1})")
            rc, timed_out = sandbox.spawn(tmp, tmp / "spec.json", limits, tmp / "worker.log")
            if rc == sandbox.REFUSED:
                report["blocked"] = "sandbox: " + (tmp / "worker.log").read_text(errors="replace").strip()[-400:]
                return report
            rfile = tmp / "result.json"
            result = json.loads(rfile.read_text()) if rfile.is_file() else {"runs": []}
            if rfile.is_file():
                rfile.rename(tmp / f"result.{i + 1}.json")
            if timed_out:
                report["blocked"] = f"the runs exceeded the wall-clock limit of {limits.wall_s:.0f} s"
                break
            if rc != 0 and (not result["runs"] or result["runs"][-1]["status"] == "ok"):
                tail = (tmp / "worker.log").read_text(errors="replace").strip().splitlines()[-3:]
                report["blocked"] = f"the worker died with status {rc} (limits: CPU {limits.cpu_s} s, memory " \
                                    f"{limits.memory_bytes >> 30} GiB): {' | '.join(tail)[-300:]}"
                break
            first = result["runs"][0] if result["runs"] else None
            f = (first or {}).get("failure") or {}
            if first and first["status"] != "ok" and i == 0 and f.get("kind") == "missing-module" \
                    and (f.get("module") or "").split(".")[0] == "triton":
                note = ["Triton is stubbed: kernels are defined but refuse to launch"]
                continue
            if first and first["status"] != "ok" and i == 1 and f.get("kind") == "refused":
                note = [f"training skipped (ITERATIONS=0): {f.get('message')}; validation data in training is "
                        "not measured"]
                continue
            break
        report["notes"] += note
        report["env"] = {k: v for k, v in spec["env"].items() if k in names or k in user}
        report["runs"] = [{"name": r["name"], "status": r["status"], "seconds": r["seconds"],
                           "score_calls": r["scores"]["score_calls"], "trained_calls": r["scores"]["trained_calls"]}
                          for r in result["runs"]]
        if "blocked" in report:
            return report
        bad = [r for r in result["runs"] if r["status"] != "ok"]
        if bad:
            report["blocked"] = f"run {bad[0]['name']} failed: {_blocker(bad[0])}"
            report["failure_trace"] = (bad[0].get("failure") or {}).get("trace", "")[-2000:]
            return report
        report["probes"] = probes(result["runs"], runs, len(ws["stream"]))
        st = {p["status"] for p in report["probes"]}
        report["verdict"] = "fail" if FAIL in st else ("pass" if st == {PASS} else "incomplete")
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
