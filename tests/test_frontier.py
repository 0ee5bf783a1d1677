"""The 1.0611 record's stack as flags (FRONTIER.md section 1): every flag changes the computation and starts at its
documented value, parameter counts follow the formulas, causality holds with every flag on and VARLEN_ATTN isolates
documents, the seed techniques compose with it, a run trains, exports, reloads and scores, EVAL_ONLY refuses another
architecture, and the depth-recurrence switch reaches compiled code. The record's own script is compared with the
kit by bench/bench_equiv.py (bench/RESULTS.md)."""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_in_process, cut_val, data_env, reload_artifact, run_script, short_data, strs
from test_flags import randomise, tokens

# 5 blocks. Plain order: encoder [0, 1], decoder [2, 3, 4]; looped (blocks 1-2 twice): [0, 1, 2] / [1, 2, 3, 4];
# two lanes from block 3 (after the loop).
SMALL = {"VOCAB_SIZE": "64", "NUM_LAYERS": "5", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
         "TRAIN_SEQ_LEN": "32", "EVAL_STRIDE": "16", "TRAIN_BATCH_TOKENS": "512", "SEED": "3"}
FRONTIER = {"SKIP_GATES": 1, "NUM_LOOPS": 1, "LOOP_START": 1, "LOOP_END": 2, "PARALLEL_START_LAYER": 3,
            "SMEAR_GATE": 2, "GATED_ATTENTION": 2, "SPARSE_ATTN_GATE_SCALE": 0.5, "GATE_WINDOW": 8, "VARLEN_ATTN": 1,
            "XSA_LAST_N": 5, "QK_GAIN_INIT": 5, "MLP_MULT": 4, "MLP_ACT": "leaky_relu2", "ROPE_DIMS": 8,
            "LN_SCALE": 1}
SEEDS = {"VALUE_RESIDUAL": 1, "REVIEW_RESIDUAL": 1, "BIGRAM_HASH": 1, "BIGRAM_BUCKETS": 101, "BIGRAM_DIM": 16}
BOS_AT = ((0, 0), (0, 9), (0, 10), (1, 5), (1, 21))  # (row, position) of the BOS tokens of tokens(T=32)


def args_of(tg, **over):
    return tg.Hyperparameters.from_env({**SMALL, **strs(over)})


def model_of(tg, looping=False, **over):
    m = tg.build_model(args_of(tg, **over)).double()
    m.looping = looping
    return m


def same_weights(src, dst):
    """dst takes every tensor of src it has (same name; the leading rows where the shapes differ)."""
    s, d = src.state_dict(), dst.state_dict()
    for k, v in d.items():
        if k in s and v.shape == s[k].shape:
            v.copy_(s[k])
        elif k in s:
            n = min(len(v), len(s[k]))
            v[:n].copy_(s[k][:n])
    dst.load_state_dict(d)
    return dst


def hook_inputs(module, store: list):
    return module.register_forward_hook(lambda m, args, out: store.append(args))


# ---------------------------------------------------------------- names, values, relations

def test_record_names_set_the_kit_settings(tg):
    env = {"SKIP_GATES_ENABLED": "1", "SMEAR_GATE_ENABLED": "1", "SPARSE_ATTN_GATE_ENABLED": "1"}
    args = tg.Hyperparameters.from_env(env)
    assert (args.skip_gates, args.smear_gate, args.gated_attention) == (1, 2, 2)
    off = tg.Hyperparameters.from_env({k: "0" for k in env})
    assert (off.skip_gates, off.smear_gate, off.gated_attention) == (0, 0, 0)
    with pytest.raises(tg.ConfigError, match="SMEAR_GATE='1' and SMEAR_GATE_ENABLED='1' set SMEAR_GATE to different values"):
        tg.Hyperparameters.from_env({"SMEAR_GATE_ENABLED": "1", "SMEAR_GATE": "1"})
    assert tg.Hyperparameters.from_env({"SMEAR_GATE_ENABLED": "1", "SMEAR_GATE": "2"}).smear_gate == 2


@pytest.mark.parametrize("over,message", [
    ({"NUM_LOOPS": "1", "LOOP_START": "3", "LOOP_END": "2"}, "LOOP_START=3, LOOP_END=2: the looped blocks"),
    ({"NUM_LOOPS": "1", "LOOP_START": "1", "LOOP_END": "5"}, "LOOP_END < NUM_LAYERS=5"),
    ({"NUM_LOOPS": "1", "LOOP_START": "1", "LOOP_END": "2", "PARALLEL_START_LAYER": "2"},
     "PARALLEL_START_LAYER=2 must be below NUM_LAYERS=5 and, with NUM_LOOPS, after the looped blocks"),
    ({"PARALLEL_START_LAYER": "5"}, "PARALLEL_START_LAYER=5 must be below NUM_LAYERS=5"),
    ({"SMEAR_GATE": "2", "GATE_WINDOW": "65"}, "GATE_WINDOW=65 must be at most MODEL_DIM=64"),
    ({"SPARSE_ATTN_GATE_ENABLED": "2"}, "SPARSE_ATTN_GATE_ENABLED='2': use one of 0, 1"),
    ({"MUON_NS": "cubic"}, "MUON_NS='cubic': use one of classic, polar"),
    ({"WARMDOWN_FRAC": "1.5"}, "WARMDOWN_FRAC=1.5 is out of range"),
    ({"MIN_LR": "-0.1"}, "MIN_LR=-0.1 is out of range"),
    ({"PARALLEL_FINAL_LANE": "sum"}, "PARALLEL_FINAL_LANE='sum': use one of mean, attn, mlp"),
], ids=["loop-order", "loop-end", "lanes-in-loop", "lanes-end", "window", "record-value", "ns", "warmdown",
        "min-lr", "final-lane"])
def test_bad_values_one_line_exit_2(tg, monkeypatch, tmp_path, over, message):
    rc, err = cli_in_process(tg, monkeypatch, tmp_path, {**SMALL, **over}, ["--check"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- each flag: its computation and its init

def test_skip_gates(tg):
    base = randomise(model_of(tg))
    gated = same_weights(base, model_of(tg, SKIP_GATES=1))
    assert torch.all(gated.skip_gates == 0) and gated.skip_gates.shape == (2, 64)
    x, s = (torch.randn(2, 8, 64, dtype=torch.float64) for _ in range(2))
    w = gated.skip_weights[0]
    assert torch.equal(base.skip(x, 0, s), x + w * s)
    torch.testing.assert_close(gated.skip(x, 0, s), 0.5 * x + 0.5 * w * s, rtol=0, atol=1e-14)  # the mean at init
    with torch.no_grad():
        gated.skip_gates.normal_(0, 1)
    g = torch.sigmoid(gated.skip_gates[1])
    torch.testing.assert_close(gated.skip(x, 1, s), g * x + (1 - g) * gated.skip_weights[1] * s)
    assert not torch.allclose(gated(tokens()), base(tokens()))


def test_content_smear_is_identity_at_init_then_the_record_formula(tg):
    base = randomise(model_of(tg))
    model = same_weights(base, model_of(tg, SMEAR_GATE=2, GATE_WINDOW=8))
    sm = model.content_smear
    assert model.smear is None and sm.gate.weight.shape == (1, 8) and torch.all(sm.gate.weight == 0)
    assert sm.lam.item() == 0
    idx = tokens(bos=BOS_AT)
    assert torch.equal(model(idx), base(idx))  # identity at init
    with torch.no_grad():
        sm.gate.weight.normal_(0, 1)
        sm.lam.fill_(0.7)
    x = torch.randn(2, 32, 64, dtype=torch.float64)
    want = x.clone()
    for b in range(2):
        for t in range(1, 32):
            if idx[b, t] != 1:
                want[b, t] += 0.7 * torch.sigmoid(sm.gate.weight[0] @ x[b, t, :8]) * x[b, t - 1]
    torch.testing.assert_close(sm(x, idx), want, rtol=0, atol=1e-13)
    seen = []  # in the model: on the raw token embedding, before the first norm
    hook_inputs(sm, seen)
    model(idx)
    assert torch.equal(seen[0][0], model.tok_emb(idx))


def test_sparse_attention_gate_halves_at_init_then_gates_each_head(tg):
    base = randomise(model_of(tg))
    model = same_weights(base, model_of(tg, GATED_ATTENTION=2, GATE_WINDOW=8, SPARSE_ATTN_GATE_SCALE=0.5))
    gate = model.blocks[0].attn.out_gate
    assert gate.w.shape == (4, 8) and torch.all(gate.w == 0)
    a = torch.randn(2, 16, 64, dtype=torch.float64)
    out_b, out_g = [], []
    hook_inputs(base.blocks[0].attn.proj, out_b)
    hook_inputs(model.blocks[0].attn.proj, out_g)
    base.blocks[0].attn(a, None)
    model.blocks[0].attn(a, None)
    assert torch.equal(out_g[0][0], 0.5 * out_b[0][0])  # sigma(0) = 0.5 exactly
    with torch.no_grad():
        gate.w.normal_(0, 1)
    model.blocks[0].attn(a, None)
    g = torch.sigmoid(0.5 * a[..., :8] @ gate.w.T)  # (B, T, heads)
    torch.testing.assert_close(out_g[1][0].view(2, 16, 4, 16), out_b[0][0].view(2, 16, 4, 16) * g[..., None])


def test_lanes_follow_the_record_formula(tg):
    model = model_of(tg, PARALLEL_START_LAYER=3)
    lanes = model.lanes
    assert torch.all(lanes.resid.float() == torch.tensor(1.1)) and lanes.resid.shape == (5, 2)
    assert torch.all(lanes.post == 1) and lanes.post.shape == (5, 2, 2)
    randomise(model, std=0.3, seed=4)
    x0, l0, l1 = (torch.randn(2, 8, 64, dtype=torch.float64) for _ in range(3))
    block = model.blocks[4]
    _, a, _ = block.attend(l0, x0, None, None)
    f = block.feed(l1)
    (n0, n1), _ = lanes(block, 4, (l0, l1), x0, None, None)
    r, p = lanes.resid[4], lanes.post[4]
    torch.testing.assert_close(n0, r[0] * l0 + p[0, 0] * a + p[1, 0] * f)
    torch.testing.assert_close(n1, r[1] * l1 + p[0, 1] * a + p[1, 1] * f)
    for final, want in (("mean", 0.5 * (n0 + n1)), ("attn", n0), ("mlp", n1)):
        lanes.final = final
        assert torch.equal(lanes.merge((n0, n1)), want)
    # only blocks >= PARALLEL_START_LAYER use their lambdas; the lanes change the network
    idx = tokens()
    ref = model(idx)
    with torch.no_grad():
        lanes.resid[:3] += 1
        lanes.post[:3] += 1
    assert torch.equal(model(idx), ref)
    with torch.no_grad():
        lanes.resid[3] += 0.5
    assert not torch.allclose(model(idx), ref)
    plain = same_weights(model, model_of(tg))
    assert not torch.allclose(plain(idx), ref)


def test_depth_recurrence_order_and_switch(tg):
    record = tg.Hyperparameters.from_env({"NUM_LAYERS": "11", "NUM_LOOPS": "2", "LOOP_START": "3", "LOOP_END": "5"})
    assert tg.layer_order(record, True) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert tg.layer_order(record, False) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    plain = randomise(model_of(tg))
    model = same_weights(plain, model_of(tg, NUM_LOOPS=1, LOOP_START=1, LOOP_END=2))
    assert model.skip_weights.shape == (3, 64) and not model.looping
    idx = tokens()
    assert torch.equal(model(idx), plain(idx))  # looping off: the plain network (its first skip weights)
    calls = []
    for i, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    model.looping = True
    looped = model(idx)
    assert calls == [0, 1, 2, 1, 2, 3, 4] and not torch.allclose(looped, plain(idx))


def test_varlen_attention_isolates_documents(tg):
    model = randomise(model_of(tg, **FRONTIER, **SEEDS, looping=True), std=0.1).eval()
    dense = same_weights(model, model_of(tg, **{**FRONTIER, **SEEDS, "VARLEN_ATTN": 0}, looping=True)).eval()
    idx = tokens(bos=BOS_AT)
    docs = [(0, 0, 9), (0, 9, 10), (0, 10, 32), (1, 0, 5), (1, 5, 21), (1, 21, 32)]  # row 1 starts mid-document
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref = model(idx)
        one_doc = tokens(bos=((0, 0),))
        torch.testing.assert_close(model(one_doc), dense(one_doc), rtol=0, atol=1e-12)  # one document: dense
        assert not torch.allclose(ref, dense(idx))
        for b, lo, hi in docs:
            alt = idx.clone()
            first = lo + int(idx[b, lo] == 1)  # keep the document's BOS, change the rest of it
            alt[b, first:hi] = torch.randint(2, 64, (hi - first,), generator=g)
            out = model(alt)
            for b2, lo2, hi2 in docs:
                if (b2, lo2) != (b, lo):  # every other document's outputs are unchanged, exactly
                    assert torch.equal(out[b2, lo2:hi2], ref[b2, lo2:hi2]), ((b, lo), (b2, lo2))
            assert first == hi or not torch.equal(out[b, first:hi], ref[b, first:hi])


def test_doc_bounds_packs_as_the_record(tg):
    x = torch.full((1, 100), 5)
    x[0, [7, 10, 11]] = 1  # a continued document 0..6, then BOS at 7, 10 (one token), 11 (89 tokens)
    cu = tg.doc_bounds(x, 32, bucket=8)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 7, 10, 11, 43, 75, 100, 100]
    rows = tg.doc_bounds(x.view(2, 50), 64, bucket=4)  # every row starts a segment
    assert rows.tolist() == [0, 7, 10, 11, 50, 100, 100, 100]


# ---------------------------------------------------------------- optimiser and schedule

def test_muon_row_normalisation_and_polar_express(tg, monkeypatch):
    assert tg.ns_coefficients("classic", 3) == ((3.4445, -4.7750, 2.0315),) * 3
    assert tg.ns_coefficients("polar", 7) == tg.POLAR_EXPRESS and len(tg.POLAR_EXPRESS) == 5
    assert tg.ns_coefficients("polar", 2) == tg.POLAR_EXPRESS[:2]
    g = torch.Generator().manual_seed(0)
    G = torch.randn(128, 64, generator=g) * torch.logspace(-3, 0, 64)
    err = {k: (1 - torch.linalg.svdvals(tg.newton_schulz(G, tg.ns_coefficients(k, 5)))).abs().mean().item()
           for k in ("classic", "polar")}
    assert err["polar"] < 0.7 * err["classic"]  # closer to orthogonal in the same 5 steps
    seen = []
    monkeypatch.setattr(tg, "newton_schulz", lambda u, coeffs: seen.append(u.clone()) or u)
    for row_norm in (0, 1):
        args = args_of(tg, MUON_ROW_NORMALIZE=row_norm)
        model = tg.build_model(args)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        tg.build_optimizers(model, args)[1].step()
    n = len(seen) // 2
    assert all(not torch.allclose(u.norm(dim=-1), torch.ones(u.size(0))) for u in seen[:n])
    assert all(torch.allclose(u.norm(dim=-1), torch.ones(u.size(0))) for u in seen[n:])


def test_lr_multiplier_and_loop_switch(tg):
    a = args_of(tg, WARMDOWN_FRAC=0.85, MIN_LR=0.1, MAX_WALLCLOCK_SECONDS=600, NUM_LOOPS=1, LOOP_START=1,
                LOOP_END=2, ENABLE_LOOPING_AT=0.35)
    for ms in (0, 60_000, 89_999, 90_000, 300_000, 540_000, 600_000, 700_000):
        frac = ms / 600_000
        want = 1.0 if frac < 0.15 else max((1 - frac) / 0.85, 0.1)
        assert tg.lr_multiplier(a, 5, ms) == pytest.approx(want, abs=1e-15)
        assert tg.looping_due(a, 5, ms) == (frac >= 0.35)
    steps = args_of(tg, WARMDOWN_FRAC=0.5, MAX_WALLCLOCK_SECONDS=0, ITERATIONS=100)  # no cap: by steps
    assert [tg.lr_multiplier(steps, s, 1e9) for s in (0, 49, 50, 75, 100)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    base = args_of(tg, MIN_LR=0.25, WARMDOWN_ITERS=10, MAX_WALLCLOCK_SECONDS=0, ITERATIONS=100)
    assert [tg.lr_multiplier(base, s, 0) for s in (0, 90, 95, 100)] == [1.0, 1.0, 0.5, 0.25]
    assert not tg.looping_due(args_of(tg, ENABLE_LOOPING_AT=0.0), 0, 0)  # NUM_LOOPS=0: never


def test_embed_weight_decay_is_separate(tg):
    out = {}
    for embed_wd in (-1.0, 0.5):
        args = args_of(tg, ADAM_WD=0.1, EMBED_WD=embed_wd, TIED_EMBED_LR=0.1, SCALAR_LR=0.1)
        model = randomise(tg.build_model(args))
        p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        for opt in tg.build_optimizers(model, args)[0]:
            opt.step()
        out[embed_wd] = {n: p.detach() / p0[n] for n, p in model.named_parameters() if p0[n].abs().min() > 0}
    assert torch.allclose(out[-1.0]["tok_emb.weight"], torch.tensor(1 - 0.1 * 0.1))  # ADAM_WD by default
    assert torch.allclose(out[0.5]["tok_emb.weight"], torch.tensor(1 - 0.1 * 0.5))
    assert torch.allclose(out[0.5]["blocks.0.attn_scale"], torch.tensor(1 - 0.1 * 0.1))


# ---------------------------------------------------------------- parameter counts

def frontier_params(V, d, L, heads, kv, mlp, window, n_skip):
    hd, hidden = d // heads, int(mlp * d)
    per_layer = 2 * d * d + 2 * d * kv * hd + 2 * d * hidden + heads + 4 * d + heads * window
    return V * d + L * per_layer + 2 * n_skip * d + L * 6 + window + 1


def test_frontier_preset_and_parameter_counts(tg):
    lines = (ROOT / "presets" / "frontier.env").read_text().splitlines()
    preset = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    tg.check_config(tg.Hyperparameters.from_env(preset), 8)
    assert tg.count_params(preset) == frontier_params(8192, 512, 11, 8, 4, 4, 12, 8) == 35_945_671
    base = tg.count_params(SMALL)
    for over, delta in [({"SKIP_GATES": 1}, 2 * 64), ({"NUM_LOOPS": 1, "LOOP_START": 1, "LOOP_END": 2}, 64),
                        ({"PARALLEL_START_LAYER": 3}, 5 * 6), ({"SMEAR_GATE": 2}, 12 + 1),
                        ({"GATED_ATTENTION": 2, "GATE_WINDOW": 8}, 5 * 4 * 8),
                        *[({k: v}, 0) for k, v in (("VARLEN_ATTN", 1), ("MUON_NS", "polar"), ("MIN_LR", 0.1),
                                                   ("MUON_ROW_NORMALIZE", 1), ("WARMDOWN_FRAC", 0.5))]]:
        assert tg.count_params({**SMALL, **{k: str(v) for k, v in over.items()}}) - base == delta, over
    roles = tg.param_roles(tg.build_model(args_of(tg, **FRONTIER)))
    assert {n for n, r in roles.items() if r == "matrix"} == {f"blocks.{i}.{m}.weight" for i in range(5) for m in (
        "attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}  # the record's four banks


# ---------------------------------------------------------------- every flag at once, with the seed techniques

COMBOS = {"frontier": FRONTIER, "seeds": {**FRONTIER, **SEEDS},
          "highway-element": {**FRONTIER, **SEEDS, "REVIEW_RESIDUAL": 0, "HIGHWAY": 1, "REVIEW_GATE": "head",
                              "GATED_ATTENTION": 1, "GATED_ATTENTION_MODE": "element", "SMEAR_GATE": 1}}


@pytest.mark.parametrize("looping", [False, True], ids=["plain", "looped"])
@pytest.mark.parametrize("name", list(COMBOS))
def test_causality_and_gradients_with_every_flag(tg, name, looping):
    model = randomise(model_of(tg, looping=looping, **COMBOS[name]), std=0.1)
    idx = tokens(bos=BOS_AT)
    model(idx, torch.roll(idx, -1, 1)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    model.eval()
    with torch.no_grad():
        ref = model(idx)
        for t in (1, 5, 6, 9, 10, 11, 20, 21, 31):
            alt = idx.clone()
            alt[:, t:] = torch.randint(2, 64, (2, 32 - t), generator=torch.Generator().manual_seed(t))
            assert (model(alt)[:, :t] - ref[:, :t]).abs().max() < 1e-12, t


# ---------------------------------------------------------------- training: the switch, the packing, a whole run

def trainer(tg, dataset, logs, **over):
    args = tg.Hyperparameters.from_env(data_env(dataset, "t", **{
        "VOCAB_SIZE": 1024, "TRAIN_BATCH_TOKENS": 512, "TRAIN_SEQ_LEN": 32, "WARMUP_STEPS": 0, **over}))
    model = tg.build_model(args)
    run = tg.Run(args, 0, 1, torch.device("cpu"), False, "none", b"", None)
    run.log = logs.append
    return tg.Trainer(run, model, model, [dataset[0] / "fineweb_train_000000.bin"], lambda: (0.0, 0.0)), model


def test_training_switches_looping_on_at_its_step(tg, dataset):
    logs, seen = [], []
    t, model = trainer(tg, dataset, logs, ITERATIONS=4, MAX_WALLCLOCK_SECONDS=0, ENABLE_LOOPING_AT=0.5,
                       NUM_LOOPS=1, LOOP_START=0, LOOP_END=0, WARMUP_STEPS=1, VARLEN_ATTN=1)
    model.register_forward_pre_hook(lambda m, args: seen.append((m.looping, args[0].shape, args[2] is not None)))
    t.train()
    assert [line for line in logs if line.startswith("layer_loop")] == ["layer_loop:enabled step:2 frac:0.500"]
    # warm-up: 8 micro-batches plain, 8 looped; then steps 0-1 plain, 2-3 looped; each micro-batch one packed row
    assert [s[0] for s in seen] == [False] * 8 + [True] * 8 + [False] * 16 + [True] * 16
    assert all(s[1] == (1, 64) and s[2] for s in seen)
    assert model.looping  # evaluation loops


def test_loop_switch_reaches_compiled_code(tg):
    """torch.compile (dynamo; the eager backend keeps this test fast) guards on the switch: after it flips, the
    compiled model runs the looped graph, and flipping back reuses the first (two graphs, none frozen)."""
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    model = randomise(tg.build_model(args_of(tg, **FRONTIER)))
    counter = CompileCounter()
    compiled = torch.compile(model, dynamic=False, fullgraph=True, backend=counter)
    idx = tokens(bos=BOS_AT)
    y, cu = torch.roll(idx, -1, 1), tg.doc_bounds(idx, 16)
    torch._dynamo.mark_dynamic(cu, 0)  # as the Trainer does
    out = {}
    for looping in (False, True, False):
        model.looping = looping
        out[looping] = compiled(idx, y, cu).item()
        assert out[looping] == model(idx, y, cu).item()  # the eager model in the same state
    assert out[True] != out[False] and counter.frame_count == 2


VAL_TOKENS = 4097


@pytest.fixture(scope="module")
def frontier_run(tg, dataset, tmp_path_factory):
    """A 3-step run of the whole stack on a 4,097-token val split (looping on from step 2)."""
    root = tmp_path_factory.mktemp("frontier_run")
    val = cut_val(dataset[0], VAL_TOKENS)
    data = short_data(dataset[0], root / "data", val)
    shape = {k: SMALL[k] for k in ("NUM_LAYERS", "MODEL_DIM", "NUM_HEADS", "NUM_KV_HEADS")}
    env = data_env((data, dataset[1]), "fr", VOCAB_SIZE=1024, FLOAT_EVAL=0, TRAIN_BATCH_TOKENS=1024,
                   ZSTD_LEVEL=3, ITERATIONS=3, ENABLE_LOOPING_AT=0.5, WARMDOWN_FRAC=0.5, MIN_LR=0.1, MUON_NS="polar",
                   MUON_ROW_NORMALIZE=1, EMBED_WD=0.05, EMA=1, **shape, **FRONTIER)
    return root, env, val, run_script(env, root)


def test_frontier_run_trains_exports_reloads_and_scores(tg, frontier_run):
    root, env, val, res = frontier_run
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((root / "logs" / "fr.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 3 and math.isfinite(summary["final"]["val_bpb"])
    assert "layer_loop:enabled step:2 frac:0.667" in (root / "logs" / "fr.txt").read_text()
    assert summary["num_params"] == tg.count_params(env)
    model, _, _ = reload_artifact(tg, root / summary["artifact_path"])
    model.looping = True  # evaluation loops
    nll = tg.score_nll(model, torch.from_numpy(val.astype(np.int64)), 64, 32, batch_seqs=256)
    assert nll.numel() == VAL_TOKENS - 1
    assert nll.mean().item() == pytest.approx(summary["final"]["val_loss"], abs=1e-5)


@pytest.mark.parametrize("change", ["SKIP_GATES=0", "NUM_LOOPS=2", "PARALLEL_FINAL_LANE=mlp", "VARLEN_ATTN=0",
                                    "SMEAR_GATE=1", "GATE_WINDOW=4", "SPARSE_ATTN_GATE_SCALE=1"])
def test_eval_only_refuses_another_architecture(tg, frontier_run, change):
    root, env, _, res = frontier_run
    assert res.returncode == 0, res.stderr[-3000:]
    key, value = change.split("=")
    args = tg.Hyperparameters.from_env({**env, "EVAL_ONLY": str(root / "artifacts" / "fr.ptz"), key: value})
    with pytest.raises(tg.ConfigError, match=f"was made with a different model: {key}="):
        tg.read_eval_artifact(args)
    same = tg.Hyperparameters.from_env({**env, "EVAL_ONLY": str(root / "artifacts" / "fr.ptz")})
    assert tg.read_eval_artifact(same)[1]["config"]["NUM_LOOPS"] == 1


# ---------------------------------------------------------------- bench/bench_equiv.py (the record's script is not here)

def test_bench_equiv_without_the_record_is_one_error_line(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / "train_gpt.py"
    bad.write_text("import torch\nx = 1\n")  # a script, but not the record's
    for other, message in ((tmp_path / "missing.py", "does not exist"), (bad, "not the 1.0611 record's")):
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_equiv.py"), "--other", str(other)],
                             capture_output=True, text=True, timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], lines


@pytest.mark.skipif(not os.environ.get("PG_RECORD_1_0611"), reason="set PG_RECORD_1_0611 to the record's train_gpt.py")
def test_bench_equiv_against_the_record():
    """~2 minutes on 2 cores: the whole comparison, looping on and off, within tolerance (exit 0)."""
    from bench import bench_equiv
    assert bench_equiv.main(["--other", os.environ["PG_RECORD_1_0611"]]) == 0
