"""Dynamic probes of the kit's scoring functions on a tiny, randomly initialised CPU model.

Imports train_gpt.py by file path (its ``main()`` does not run) and uses only the functions listed in
docs/CONTRACT.md: ``Hyperparameters.from_env``, ``build_model``, ``score_nll``, ``score_distribution``,
``ppm_target_probs``, ``ppm_distribution``, ``mix_nll``, ``ttt_score_nll`` (with a ledger). Probes:

* future-suffix invariance: tokens from position c on replaced by random ones; every score of a target before c
  must stay identical (network, PPM, the mixture, score-first TTT);
* answer-mask invariance: token t and everything after it replaced; the distribution for t must not change;
* normalisation: the full distribution sums to 1 (+-1e-6) at sampled positions (network, PPM, mixture);
* gold consistency: the reported -log p(target) equals that entry of the full distribution;
* TTT ledger: every position an optimiser step trained on was scored before; no position scored twice; every
  target scored once.

The model runs in float64 (``model.double()``) where it can, so invariances are checked bit-for-bit; when the model
cannot run in float64 it runs in float32 and the stated tolerance applies.
"""

from __future__ import annotations

import copy
import math
import sys
import traceback
from pathlib import Path


class ProbeError(Exception):
    """The script cannot be probed at all (missing, does not import, no build_model): exit status 2."""


TINY_ENV = {"NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "VOCAB_SIZE": "64",
            "TRAIN_SEQ_LEN": "32", "EVAL_SEQ_LEN": "32", "EVAL_STRIDE": "8", "EVAL_BATCH_SEQS": "8",
            "TTT_CHUNK_TOKENS": "24", "TTT_EPOCHS": "1", "TTT_BATCH_SEQS": "4", "DEVICE": "cpu", "COMPILE": "0",
            "SEED": "0", "MLP_MULT": "2"}
TOL64 = 1e-9      # float64: scores from the same forward pass are expected bit-identical; this is a safety margin
TOL32 = 1e-4
NORM_TOL = 1e-6


def find_script(script: str | None) -> Path:
    cands = [Path(script)] if script else [Path.cwd() / "train_gpt.py", Path("/work/main/train_gpt.py")]
    for c in cands:
        if c.is_file():
            return c.resolve()
    raise ProbeError(f"no train_gpt.py found (looked at {', '.join(map(str, cands))}); pass --script PATH")


def load_module(path: Path):
    """The script imported by path (kitlib's one loader); a failure is a ProbeError (exit status 2)."""
    from kitlib.scripts import ScriptError, load_script
    try:
        return load_script(path)
    except ScriptError as exc:
        raise ProbeError(str(exc)) from None


class Ledger:
    """Records the TTT scorer's calls: scored(positions) after they are added to the totals, trained(positions)
    for the target positions each optimiser step's loss used."""

    def __init__(self):
        self.events: list[tuple[str, list[int]]] = []

    def scored(self, positions) -> None:
        self.events.append(("scored", _ints(positions)))

    def trained(self, positions) -> None:
        self.events.append(("trained", _ints(positions)))

    def check(self, n_tokens: int) -> tuple[bool, str]:
        seen: set[int] = set()
        twice: set[int] = set()
        early: set[int] = set()
        steps = 0
        for kind, pos in self.events:
            if kind == "scored":
                for p in pos:
                    if p in seen:
                        twice.add(p)
                    seen.add(p)
            else:
                steps += 1
                early |= {p for p in pos if p not in seen}
        want = set(range(1, n_tokens))
        missing = want - seen
        extra = seen - want
        problems = []
        if early:
            problems.append(f"{len(early)} position(s) trained on before being scored (first: {sorted(early)[:5]})")
        if twice:
            problems.append(f"{len(twice)} position(s) scored twice (first: {sorted(twice)[:5]})")
        if missing:
            problems.append(f"{len(missing)} target(s) never scored (first: {sorted(missing)[:5]})")
        if extra:
            problems.append(f"positions outside 1..N-1 scored: {sorted(extra)[:5]}")
        if not self.events:
            problems.append("the ledger received no calls")
        ok = not problems
        detail = "; ".join(problems) if problems else (
            f"{len(seen)} targets scored once each, {steps} training step(s), all on already-scored positions")
        return ok, detail


def _ints(positions) -> list[int]:
    try:
        import torch
        if isinstance(positions, torch.Tensor):
            return [int(x) for x in positions.reshape(-1).tolist()]
    except ImportError:  # pragma: no cover
        pass
    try:
        return [int(x) for x in list(positions)]
    except TypeError:
        return [int(positions)]


def check_sizes(n_tokens: int, seq_len: int, stride: int, seed: int = 0) -> None:
    """Refuses sizes the probes cannot work with (ProbeError: a usage error, exit 2, before any work)."""
    if seq_len < 2:
        raise ProbeError(f"--seq-len must be at least 2, got {seq_len}")
    if not 1 <= stride <= seq_len:
        raise ProbeError(f"--stride must be between 1 and --seq-len ({seq_len}), got {stride}")
    if not 4 <= n_tokens <= 1_000_000:
        raise ProbeError(f"--tokens must be between 4 and 1000000, got {n_tokens}")
    if seed < 0:
        raise ProbeError(f"--seed must be >= 0, got {seed}")


def run_probes(script: str | None = None, env: dict | None = None, n_tokens: int = 96, seq_len: int = 32,
               stride: int = 8, seed: int = 0) -> dict:
    check_sizes(n_tokens, seq_len, stride, seed)
    import numpy as np
    import torch

    path = find_script(script)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a model this small runs fastest on one thread, and results do not depend on it
    try:
        return _run(path, env, n_tokens, seq_len, stride, seed)
    finally:
        torch.set_num_threads(threads)


def _run(path, env, n_tokens, seq_len, stride, seed) -> dict:
    import numpy as np
    import torch

    mod = load_module(path)
    for name in ("Hyperparameters", "build_model", "score_nll"):
        if not hasattr(mod, name):
            raise ProbeError(f"{path.name} has no {name} (see CONTRACT.md)")
    env = dict(env or {})
    full_env = _tiny_env(mod, env)
    try:
        args = mod.Hyperparameters.from_env(full_env)
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(f"Hyperparameters.from_env failed: {type(exc).__name__}: {exc}") from None
    torch.manual_seed(seed)
    try:
        model = mod.build_model(args)
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(f"build_model failed: {type(exc).__name__}: {exc}") from None
    V = int(getattr(args, "vocab_size", 0) or _vocab_of(model))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n_tokens,), generator=g)
    tokens[0] = 1
    tokens[n_tokens // 2] = 1

    results: list[dict] = []
    dtype_note, tol, model = _to_float64(model, mod, tokens, seq_len, stride)

    def add(probe, ok, detail, diff=None):
        r = {"probe": probe, "status": "pass" if ok is True else "fail" if ok is False else str(ok),
             "detail": detail}
        if diff is not None:
            r["max_abs_diff"] = diff
        results.append(r)

    def guarded(probe, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a probe that crashes fails, with the reason
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            add(probe, "error", f"{type(exc).__name__}: {exc}{where}")

    rng = np.random.default_rng(seed)
    cuts = sorted(set(int(c) for c in rng.integers(2, n_tokens - 1, size=4)) | {n_tokens // 3})
    positions = sorted(set(int(p) for p in rng.integers(1, n_tokens, size=6)) | {1, n_tokens - 1})

    def perturb(t, start):
        t2 = t.clone()
        gen = torch.Generator().manual_seed(seed + 1000 + start)
        shift = torch.randint(1, V, (len(t) - start,), generator=gen)
        t2[start:] = (t[start:] + shift) % V
        return t2

    def score(m, t):
        with torch.no_grad():
            return mod.score_nll(m, t, seq_len, stride).double()

    # ---- scoring of the network ------------------------------------------------------------------------
    def p_shape():
        nll = score(model, tokens)
        ok = tuple(nll.shape) == (n_tokens - 1,) and bool(torch.isfinite(nll).all())
        add("score_nll coverage", ok, f"{nll.numel()} finite NLLs for {n_tokens - 1} targets" if ok else
            f"expected {n_tokens - 1} finite values, got shape {tuple(nll.shape)}")
    guarded("score_nll coverage", p_shape)

    def p_future():
        base = score(model, tokens)
        worst = 0.0
        bad = []
        for c in cuts:
            other = score(model, perturb(tokens, c))
            d = float((base[:c - 1] - other[:c - 1]).abs().max()) if c > 1 else 0.0
            worst = max(worst, d)
            if d > tol:
                bad.append(c)
        add("future-suffix invariance (network)", not bad,
            f"cuts {cuts}: scores before the cut " + ("identical" if worst == 0 else f"differ by <= {worst:.3g}")
            + (f"; changed at cut(s) {bad}" if bad else "") + f" [{dtype_note}]", worst)
    guarded("future-suffix invariance (network)", p_future)

    has_dist = hasattr(mod, "score_distribution")

    def dist(m, t, ps):
        with torch.no_grad():
            return mod.score_distribution(m, t, list(ps), seq_len, stride).double()

    if has_dist:
        def p_answer():
            worst = 0.0
            bad = []
            for p in positions:
                a = dist(model, tokens, [p])
                b = dist(model, perturb(tokens, p), [p])
                d = float((a - b).abs().max())
                worst = max(worst, d)
                if d > tol:
                    bad.append(p)
            add("answer-mask invariance (network)", not bad,
                f"positions {positions}: distribution " + ("unchanged" if worst == 0 else f"moves <= {worst:.3g}")
                + (f"; changed at {bad}" if bad else ""), worst)
        guarded("answer-mask invariance (network)", p_answer)

        def p_norm():
            d = dist(model, tokens, positions)
            sums = d.exp().sum(dim=-1)
            err = float((sums - 1).abs().max())
            add("normalisation (network)", err <= NORM_TOL and tuple(d.shape) == (len(positions), V),
                f"sum of p over {d.shape[-1]} tokens at {len(positions)} positions: max |sum - 1| = {err:.2e}", err)
        guarded("normalisation (network)", p_norm)

        def p_gold():
            nll = score(model, tokens)
            d = dist(model, tokens, positions)
            gold = torch.tensor([-float(d[i, int(tokens[p])]) for i, p in enumerate(positions)], dtype=torch.float64)
            mine = torch.tensor([float(nll[p - 1]) for p in positions], dtype=torch.float64)
            err = float((gold - mine).abs().max())
            add("gold consistency (network)", err <= max(tol, 1e-8) * 10,
                f"score_nll vs -log p[target] of score_distribution: max |diff| = {err:.2e}", err)
        guarded("gold consistency (network)", p_gold)
    else:
        add("answer-mask invariance (network)", "skip", "score_distribution not provided")

    # ---- PPM and the mixture -----------------------------------------------------------------------------
    has_ppm = hasattr(mod, "ppm_target_probs") and hasattr(mod, "ppm_distribution")
    order = int(getattr(args, "ppmc_order", 2) or 2)
    excl = bool(getattr(args, "ppmc_exclusion", True))
    reset = bool(getattr(args, "ppmc_reset_doc", False))
    alpha = float(getattr(args, "ppmc_alpha", 0.95) or 0.95)
    ppmc_on = bool(getattr(args, "ppmc", 0))
    tok_np = tokens.numpy().astype(np.int64)

    def ppm_t(t_np):
        return np.asarray(mod.ppm_target_probs(t_np, V, order, excl, reset, 1), dtype=np.float64)

    def ppm_d(t_np, t):
        return np.asarray(mod.ppm_distribution(t_np, t, V, order, excl, reset, 1), dtype=np.float64)

    if has_ppm:
        def p_ppm_future():
            base = ppm_t(tok_np)
            worst, bad = 0.0, []
            for c in cuts:
                other = ppm_t(perturb(tokens, c).numpy().astype(np.int64))
                d = float(np.abs(base[:c - 1] - other[:c - 1]).max()) if c > 1 else 0.0
                worst = max(worst, d)
                if d > 0:
                    bad.append(c)
            add("future-suffix invariance (PPM)", not bad,
                f"cuts {cuts}: PPM probabilities before the cut " + ("identical" if not bad else f"change at {bad}"),
                worst)
        guarded("future-suffix invariance (PPM)", p_ppm_future)

        def p_ppm_answer():
            worst, bad = 0.0, []
            for p in positions:
                a = ppm_d(tok_np, p)
                b = ppm_d(perturb(tokens, p).numpy().astype(np.int64), p)
                d = float(np.abs(a - b).max())
                worst = max(worst, d)
                if d > 0:
                    bad.append(p)
            add("answer-mask invariance (PPM)", not bad,
                f"positions {positions}: PPM distribution " + ("unchanged" if not bad else f"changed at {bad}"), worst)
        guarded("answer-mask invariance (PPM)", p_ppm_answer)

        def p_ppm_norm():
            errs = [abs(float(ppm_d(tok_np, p).sum()) - 1.0) for p in positions]
            err = max(errs)
            add("normalisation (PPM)", err <= NORM_TOL, f"max |sum - 1| over {len(positions)} positions = {err:.2e}",
                err)
        guarded("normalisation (PPM)", p_ppm_norm)

        def p_ppm_gold():
            pt = ppm_t(tok_np)
            errs = [abs(float(pt[p - 1]) - float(ppm_d(tok_np, p)[tok_np[p]])) for p in positions]
            err = max(errs)
            add("gold consistency (PPM)", err <= 1e-12, f"ppm_target_probs vs ppm_distribution[target]: max |diff| = "
                f"{err:.2e}", err)
        guarded("gold consistency (PPM)", p_ppm_gold)

        if hasattr(mod, "mix_nll"):
            def mixed(t, t_np):
                return mod.mix_nll(score(model, t), torch.from_numpy(ppm_t(t_np)), alpha).double()

            def p_mix_future():
                base = mixed(tokens, tok_np)
                worst, bad = 0.0, []
                for c in cuts:
                    t2 = perturb(tokens, c)
                    other = mixed(t2, t2.numpy().astype(np.int64))
                    d = float((base[:c - 1] - other[:c - 1]).abs().max()) if c > 1 else 0.0
                    worst = max(worst, d)
                    if d > tol:
                        bad.append(c)
                add("future-suffix invariance (mixture)", not bad,
                    f"alpha {alpha}: mixed NLL before the cut " + ("identical" if worst == 0 else f"within {worst:.3g}")
                    + (f"; changed at {bad}" if bad else ""), worst)
            guarded("future-suffix invariance (mixture)", p_mix_future)

            if has_dist:
                def p_mix_norm_gold():
                    d = dist(model, tokens, positions).exp().numpy()
                    m = mixed(tokens, tok_np)
                    nerr, gerr = 0.0, 0.0
                    for i, p in enumerate(positions):
                        full = alpha * d[i] + (1 - alpha) * ppm_d(tok_np, p)
                        nerr = max(nerr, abs(float(full.sum()) - 1.0))
                        gerr = max(gerr, abs(float(m[p - 1]) + math.log(float(full[tok_np[p]]))))
                    add("normalisation (mixture)", nerr <= NORM_TOL,
                        f"alpha*p_net + (1-alpha)*p_ppm: max |sum - 1| = {nerr:.2e}"
                        + ("" if ppmc_on else " (PPMC is off in this configuration)"), nerr)
                    add("gold consistency (mixture)", gerr <= max(tol, 1e-8) * 10,
                        f"mix_nll vs -log of the mixed distribution at the target: max |diff| = {gerr:.2e}", gerr)
                guarded("normalisation (mixture)", p_mix_norm_gold)
    else:
        add("PPM probes", "skip", "ppm_target_probs / ppm_distribution not provided")

    # ---- score-first TTT -------------------------------------------------------------------------------------
    if hasattr(mod, "ttt_score_nll"):
        def ttt(t, ledger=None):
            m = copy.deepcopy(model)
            out = mod.ttt_score_nll(m, t, args, ledger=ledger) if ledger is not None else \
                mod.ttt_score_nll(m, t, args)
            return out.detach().double()

        def p_ledger():
            ledger = Ledger()
            out = ttt(tokens, ledger)
            ok, detail = ledger.check(n_tokens)
            shape_ok = tuple(out.shape) == (n_tokens - 1,)
            add("TTT ledger", ok and shape_ok, detail + ("" if shape_ok else f"; returned shape {tuple(out.shape)}"))
        guarded("TTT ledger", p_ledger)

        def p_ttt_future():
            base = ttt(tokens)
            worst, bad = 0.0, []
            for c in cuts:
                other = ttt(perturb(tokens, c))
                d = float((base[:c - 1] - other[:c - 1]).abs().max()) if c > 1 else 0.0
                worst = max(worst, d)
                if d > max(tol, 1e-9):
                    bad.append(c)
            add("future-suffix invariance (TTT)", not bad,
                f"cuts {cuts}: TTT scores before the cut " + ("identical" if worst == 0 else f"within {worst:.3g}")
                + (f"; changed at {bad}" if bad else ""), worst)
        guarded("future-suffix invariance (TTT)", p_ttt_future)
    else:
        add("TTT probes", "skip", "ttt_score_nll not provided")

    failed = [r for r in results if r["status"] in ("fail", "error")]
    return {"script": str(path), "verdict": "fail" if failed else "pass", "env": full_env, "dtype": dtype_note,
            "tokens": n_tokens, "seq_len": seq_len, "stride": stride, "probes": results}


def _tiny_env(mod, user: dict) -> dict:
    known = None
    try:
        known = set(mod.Hyperparameters.from_env({}).as_dict())
    except Exception:  # noqa: BLE001 - a script without as_dict: pass the tiny settings as they are
        known = None
    env = {k: v for k, v in TINY_ENV.items() if known is None or k in known}
    env.update(user)
    return env


def _vocab_of(model) -> int:
    for m in model.modules():
        if m.__class__.__name__ == "Embedding":
            return int(m.num_embeddings)
    raise ProbeError("cannot tell the vocabulary size (no VOCAB_SIZE setting and no nn.Embedding)")


def _to_float64(model, mod, tokens, seq_len, stride):
    import torch
    try:
        m64 = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            mod.score_nll(m64, tokens[: min(len(tokens), seq_len + 2)], seq_len, stride)
        return "float64", TOL64, m64
    except Exception:  # noqa: BLE001 - the model cannot run in float64: float32 with a tolerance
        return f"float32 (float64 failed), tolerance {TOL32}", TOL32, model.float().eval()
