"""PPM-C mixer: the vectorised ppm_target_probs against a plain per-token dict loop that follows the spec text.

Spec (TECHNIQUES.md, PPMC): orders min(ORDER, t')..0 then -1 (uniform); in a context P(x) = c(x)/(n+q),
escape q/(n+q); exclusion removes the symbols of the higher orders used; without exclusion the orders blend
P_k = (c_k + q_k P_{k-1}) / (n_k + q_k). Counts are updated after scoring; reset=doc restarts after a BOS.
One addition keeps every distribution normalised: once the exclusion set is the whole vocabulary (order -1 would
be empty), the order that got there has no escape.
"""
import importlib
import math

import numpy as np
import pytest

from conftest import ROOT

_impl = importlib.import_module("train_gpt")
ppm_target_probs, ppm_distribution = _impl.ppm_target_probs, _impl.ppm_distribution

V, BOS = 1024, 1
VAL_SHARD = ROOT / "data" / "datasets" / "wiki_sp1024" / "fineweb_val_000000.bin"


def ref_probs(tokens, vocab, order, exclusion, reset_doc, bos_id=BOS):
    """The spec as a per-token loop over dict tables {context tuple: {symbol: count}}."""
    tokens = [int(v) for v in tokens]
    tables, hist, out = [{} for _ in range(order + 1)], [], []

    def count(tok):  # after scoring: every order 0..min(order, tokens since the reset)
        for k in range(min(order, len(hist)) + 1):
            d = tables[k].setdefault(tuple(hist[len(hist) - k:]) if k else (), {})
            d[tok] = d.get(tok, 0) + 1
        hist.append(tok)

    count(tokens[0])  # token 0 is counted, never scored
    for x in tokens[1:]:
        top = min(order, len(hist))
        ctxs = [tables[k].get(tuple(hist[len(hist) - k:]) if k else ()) for k in range(top + 1)]
        if exclusion:
            p, excl, found = 1.0, set(), False
            for k in range(top, -1, -1):
                d = ctxs[k]
                if not d:  # never seen: skipped at no cost
                    continue
                left = {s: v for s, v in d.items() if s not in excl}
                excl |= set(d)
                n, q = sum(left.values()), len(left)
                if n == 0:  # nothing left after exclusion: skipped at no cost
                    continue
                esc = q if len(excl) < vocab else 0  # order -1 would be empty: no escape
                if x in left:
                    p *= left[x] / (n + esc)
                    found = True
                    break
                p *= esc / (n + esc)
            if not found:
                p /= vocab - len(excl)  # order -1: uniform over the symbols not excluded
        else:
            p = 1.0 / vocab
            for d in ctxs:
                if d:
                    n, q = sum(d.values()), len(d)
                    p = (d.get(x, 0) + q * p) / (n + q)
        out.append(p)
        count(x)
        if reset_doc and x == bos_id:
            tables, hist = [{} for _ in range(order + 1)], []
            count(x)
    return np.array(out)


def synthetic_stream(n, vocab=V, seed=0):
    """Deterministic Zipf-like tokens (with some repeated phrases) and a BOS every 50-200 tokens."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab - 1) ** 1.1
    x = rng.choice(np.arange(2, vocab), size=n, p=p / p.sum())
    for s in rng.integers(0, n - 40, n // 60):  # copy short phrases so that higher orders get hits
        d = rng.integers(0, n - 40)
        x[d:d + 8] = x[s:s + 8]
    x[np.cumsum(rng.integers(50, 201, n // 50))[:n // 200]] = BOS
    x[0] = BOS
    return x.astype(np.int64)


@pytest.fixture(scope="module")
def text():
    if VAL_SHARD.exists():
        return np.fromfile(VAL_SHARD, dtype="<u2", offset=1024, count=12_000)[8000:11000].astype(np.int64)
    return synthetic_stream(3000)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("exclusion", [True, False])
@pytest.mark.parametrize("reset_doc", [False, True])
def test_matches_reference(text, order, exclusion, reset_doc):
    fast = ppm_target_probs(text, V, order, exclusion, reset_doc, BOS)
    assert fast.dtype == np.float64 and fast.shape == (len(text) - 1,)
    np.testing.assert_allclose(fast, ref_probs(text, V, order, exclusion, reset_doc), rtol=0, atol=1e-9)


def test_small_lookup_chunks(text, monkeypatch):
    """The exclusion look-ups run in chunks of queries; tiny chunks (many of them, counted) must give the same
    numbers as the reference, and the chunks must cover every query once, in order."""
    seen = []
    chunks = _impl._chunks

    def spy(cost, chunk):
        out = chunks(cost, chunk)
        assert [a for a, _ in out] == [0] + [b for _, b in out[:-1]] and out[-1][1] == cost.size
        seen.append(len(out))
        return out
    monkeypatch.setattr(_impl, "PPM_LOOKUP_CHUNK", 37)
    monkeypatch.setattr(_impl, "_chunks", spy)
    for order, reset_doc in [(1, False), (2, True), (3, False)]:
        fast = ppm_target_probs(text, V, order, True, reset_doc, BOS)
        np.testing.assert_allclose(fast, ref_probs(text, V, order, True, reset_doc), rtol=0, atol=1e-9)
    assert seen and min(seen) > 10  # many chunks ran, not one


@pytest.mark.parametrize("order", [0, 2])
@pytest.mark.parametrize("exclusion", [True, False])
@pytest.mark.parametrize("reset_doc", [False, True])
def test_distribution_normalised_and_consistent(text, order, exclusion, reset_doc):
    fast = ppm_target_probs(text, V, order, exclusion, reset_doc, BOS)
    bos = [int(i) for i in np.flatnonzero(text == BOS) if i >= 1][:2]
    for t in sorted({1, 2, 3, 50, len(text) // 2, len(text) - 1, *bos, *[b + 1 for b in bos]}):
        d = ppm_distribution(text, t, V, order, exclusion, reset_doc, BOS)
        assert d.shape == (V,) and d.min() > 0
        assert abs(d.sum() - 1.0) < 1e-9
        assert abs(d[text[t]] - fast[t - 1]) < 1e-12


def test_small_vocabulary_everything_seen():
    """Every symbol is soon seen in the order-0 context: the distribution must still sum to 1."""
    x = np.random.default_rng(1).integers(0, 5, 600)
    x[::23] = BOS
    for order, exclusion, reset_doc in [(1, True, False), (2, True, True), (3, True, False), (2, False, True)]:
        fast = ppm_target_probs(x, 5, order, exclusion, reset_doc, BOS)
        np.testing.assert_allclose(fast, ref_probs(x, 5, order, exclusion, reset_doc), rtol=0, atol=1e-9)
        for t in (1, 2, 24, 100, 599):
            d = ppm_distribution(x, t, 5, order, exclusion, reset_doc, BOS)
            assert abs(d.sum() - 1.0) < 1e-9 and abs(d[x[t]] - fast[t - 1]) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_small_vocabularies(seed):
    """Dense collisions, frequent resets (also back-to-back BOS) and whole-vocabulary exclusion at every order."""
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(3, 20))
    x = rng.integers(0, vocab, 1500)
    x[rng.random(1500) < 0.02] = BOS
    for order in (0, 1, 2, 3):
        for exclusion in (True, False):
            for reset_doc in (False, True):
                fast = ppm_target_probs(x, vocab, order, exclusion, reset_doc, BOS)
                np.testing.assert_allclose(fast, ref_probs(x, vocab, order, exclusion, reset_doc), rtol=0, atol=1e-9)


def test_hand_computed():
    x = [0, 1, 0, 1, 0]
    np.testing.assert_allclose(ppm_target_probs(x, 4, 1, True), [1 / 6, 1 / 4, 1 / 2, 1 / 2], atol=1e-15)
    np.testing.assert_allclose(ppm_target_probs(x, 4, 1, False), [1 / 8, 3 / 8, 0.65, 17 / 24], atol=1e-15)
    y = [2, 1, 2, 2]  # BOS = 1 at position 1
    np.testing.assert_allclose(ppm_target_probs(y, 4, 1, True, True, 1), [1 / 6, 1 / 6, 1 / 4], atol=1e-15)
    np.testing.assert_allclose(ppm_target_probs(y, 4, 1, True, False, 1), [1 / 6, 1 / 4, 1 / 3], atol=1e-15)


@pytest.mark.parametrize("exclusion", [True, False])
@pytest.mark.parametrize("reset_doc", [False, True])
def test_causal(text, exclusion, reset_doc):
    base = ppm_target_probs(text, V, 3, exclusion, reset_doc, BOS)
    rng = np.random.default_rng(7)
    for t in (1, 2, 700, len(text) - 1):
        other = text.copy()
        other[t:] = rng.integers(0, V, len(text) - t)
        changed = ppm_target_probs(other, V, 3, exclusion, reset_doc, BOS)
        np.testing.assert_array_equal(changed[:t - 1], base[:t - 1])  # tokens 1..t-1
        np.testing.assert_array_equal(ppm_distribution(other, t, V, 3, exclusion, reset_doc, BOS),
                                      ppm_distribution(text, t, V, 3, exclusion, reset_doc, BOS))


@pytest.mark.parametrize("exclusion", [True, False])
@pytest.mark.parametrize("reset_doc", [False, True])
def test_order0_and_degenerate_streams(text, exclusion, reset_doc):
    args = (exclusion, reset_doc, BOS)
    for order in (0, 1, 2, 3):
        assert ppm_target_probs(text[:1], V, order, *args).shape == (0,)
        streams = [text[:2], np.array([BOS, BOS]), np.full(300, 5), np.full(300, BOS),
                   np.array([BOS, 5, BOS, BOS, 5, 5, BOS, 5, 5, 5, BOS]), text[:400].astype(np.uint16)]
        for s in streams:
            fast = ppm_target_probs(s, V, order, *args)
            np.testing.assert_allclose(fast, ref_probs(s, V, order, *args), rtol=0, atol=1e-9)
            assert abs(ppm_distribution(s, len(s) - 1, V, order, *args).sum() - 1) < 1e-9
    fast = ppm_target_probs(text, V, 0, *args)  # order 0 on the real stream
    np.testing.assert_allclose(fast, ref_probs(text, V, 0, *args), rtol=0, atol=1e-9)
    if exclusion and text[1] != text[0]:  # token 1: order 0 holds token 0 alone, escape 1/2, then 1/(V-1)
        assert math.isclose(fast[0], 1 / 2 / (V - 1))
