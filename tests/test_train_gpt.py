"""The core of train_gpt.py: configuration checks, exact byte accounting, sliding-window scoring, the artifact,
distributed equivalence and the end-to-end run."""
import json
import math
import re

import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import TINY_ENV, run_script


def tiny_args(tg, **over):
    env = {**TINY_ENV, "VOCAB_SIZE": "1024", **{k: str(v) for k, v in over.items()}}
    return tg.Hyperparameters.from_env(env)


def data_env(dataset, run_id="t", **over):
    data_path, tok = dataset
    return {**TINY_ENV, "DATA_PATH": str(data_path), "TOKENIZER_PATH": str(tok), "RUN_ID": run_id,
            **{k: str(v) for k, v in over.items()}}


# ---------------------------------------------------------------- windows and scoring

@pytest.mark.parametrize("n", [2, 3, 10, 64, 65, 66, 100, 257, 1000])
@pytest.mark.parametrize("seq_len,stride", [(64, 64), (64, 32), (64, 1), (64, 7), (16, 5)])
def test_windows_score_every_target_exactly_once(tg, n, seq_len, stride):
    wins = tg.windows(n, seq_len, stride)
    scored = [p for _, a, e in wins for p in range(a, e)]
    assert scored == list(range(1, n))  # positions 1..N-1, in order, once each, tail included
    for s, a, e in wins:
        assert e - 1 - s == min(seq_len, n - 1)  # full-length windows, inputs inside the stream
        assert s >= 0 and e <= n
        if a > 1:  # later windows: every scored token keeps at least L - stride tokens of context
            assert a - s >= seq_len - stride
            assert e - a <= stride


def test_score_nll_equals_full_context_forward(tg):
    args = tiny_args(tg, VOCAB_SIZE=64)
    model = tg.build_model(args).double().eval()
    for p in model.parameters():  # zero-initialised projections would hide context use
        torch.nn.init.normal_(p, std=0.05)
    tokens = torch.randint(0, 64, (50,))
    nll = tg.score_nll(model, tokens, seq_len=64, stride=32)
    ref = -torch.log_softmax(model(tokens[None, :-1])[0], -1).gather(1, tokens[1:, None]).squeeze(1)
    torch.testing.assert_close(nll, ref, rtol=0, atol=1e-12)


def test_plain_evaluation_when_stride_equals_seq_len(tg):
    args = tiny_args(tg, VOCAB_SIZE=64)
    model = tg.build_model(args).double().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    tokens = torch.randint(0, 64, (16 * 5 + 1,))
    nll = tg.score_nll(model, tokens, seq_len=16, stride=16)
    x, y = tokens[:-1].view(5, 16), tokens[1:].view(5, 16)
    ref = -torch.log_softmax(model(x), -1).gather(2, y[..., None]).flatten()
    torch.testing.assert_close(nll, ref, rtol=0, atol=1e-12)
    for batch in (1, 2, 3):  # a padded last batch scores nothing twice and nothing extra
        torch.testing.assert_close(tg.score_nll(model, tokens, 16, 16, batch_seqs=batch), ref, rtol=0, atol=1e-12)


def test_distribution_is_normalised_and_matches_gold(tg):
    args = tiny_args(tg, VOCAB_SIZE=64)
    model = tg.build_model(args).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    tokens = torch.randint(0, 64, (200,))
    nll = tg.score_nll(model, tokens, 64, 16)
    positions = [1, 2, 63, 64, 65, 100, 199]
    logp = tg.score_distribution(model, tokens, positions, 64, 16)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(len(positions), dtype=torch.float64))
    for i, p in enumerate(positions):
        assert abs(-logp[i, tokens[p]].item() - nll[p - 1].item()) < 1e-12


# ---------------------------------------------------------------- bytes

def test_bytes_per_document_equal_decoded_utf8(tg, dataset):
    data_path, tok = dataset
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    tables = tg.byte_tables(sp)
    val = tg.load_shard(data_path / "fineweb_val_000000.bin")
    per_target = tg.target_bytes(val, tables)
    starts = np.flatnonzero(val == 1)
    assert starts[0] == 0 and len(starts) > 100
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else len(val)
        ids = val[s + 1:e].tolist()
        # targets s+1..e-1 are this document's tokens; target p has index p-1 in per_target
        assert per_target[s:e - 1].sum() == len(sp.decode(ids).encode("utf-8")), f"document {i}"
    manifest = json.loads((data_path / "manifest.json").read_text())
    assert per_target.sum() == manifest["val_bytes"]


def test_byte_table_avoids_both_public_bugs(tg, dataset):
    sp = spm.SentencePieceProcessor(model_file=str(dataset[1]))
    base, space, boundary = tg.byte_tables(sp)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and all(base[i] == 1 for i in byte_ids)  # not len("<0xNN>") == 6
    spaced = [i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("\u2581")]
    for i in spaced:  # the leading space is counted only through `space`, never inside `base`
        assert space[i] and base[i] == len(sp.id_to_piece(i)[1:].encode())
    ids = sp.encode("a b")
    stream = np.array([1] + ids)
    assert tg.target_bytes(stream, (base, space, boundary)).sum() == 3
    assert all(boundary[i] for i in (0, 1, 2, 3))


# ---------------------------------------------------------------- artifact

def test_artifact_roundtrip_and_quantisation(tg):
    args = tiny_args(tg)
    model = tg.build_model(args)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    state = model.state_dict()
    blob = tg.pack_artifact(state, args, {"config": args.as_dict()})
    loaded, meta = tg.unpack_artifact(blob)
    assert meta["config"]["MODEL_DIM"] == 64 and set(loaded) == set(state)
    for name, t in state.items():
        err = (loaded[name] - t).abs().max().item()
        assert err <= t.abs().max().item() / 31 + 1e-6, name  # at worst half an int6 step of the max row
    w = torch.randn(64, 300)
    w[0, 0] = 40.0  # an outlier: clipping it must win on that row
    q, scale = tg.quantize_rows(w, 6)
    assert q.min() >= -32 and q.max() <= 31
    err = ((q.float() * scale.float()[:, None]) - w).square().sum(1)
    q1, s1 = q.clone(), (w.abs().amax(1) / 31).half()
    plain = (torch.clamp(torch.round(w / s1.float()[:, None]), -32, 31) * s1.float()[:, None] - w).square().sum(1)
    assert torch.all(err <= plain + 1e-6) and err[0] < plain[0]
    q5, _ = tg.quantize_rows(w, 5)
    assert q5.min() >= -16 and q5.max() <= 15


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty"])
def test_damaged_artifact_fails_clearly(tg, damage):
    args = tiny_args(tg)
    blob = tg.pack_artifact(tg.build_model(args).state_dict(), args, {})
    bad = {"truncate": blob[: len(blob) // 2], "flip": blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:],
           "foreign": b"PK\x03\x04" + blob[4:], "empty": b""}[damage]
    with pytest.raises(tg.ConfigError, match="corrupted|not a train_gpt.py artifact"):
        tg.unpack_artifact(bad, "x.ptz")


# ---------------------------------------------------------------- configuration errors (one line, exit 2)

def test_config_errors(tg, dataset, tmp_path):
    data_path, tok = dataset
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fineweb_train_000000.bin").write_bytes((data_path / "fineweb_train_000000.bin").read_bytes()[:5000])
    (bad / "fineweb_val_000000.bin").write_bytes(b"\0" * 2000)
    cases = [
        (dict(NUM_LAYER="4"), "did you mean NUM_LAYERS"),
        (dict(VALUE_RESIDUALS="1"), "did you mean VALUE_RESIDUAL"),
        (dict(VOCAB_SIZE="2048"), "has 1024 pieces but VOCAB_SIZE=2048"),
        (dict(DATA_PATH=str(tmp_path / "nope")), "is not a folder"),
        (dict(DATA_PATH=str(bad)), "truncated or corrupted|magic"),
        (dict(TRAIN_BATCH_TOKENS="1000"), "must be a multiple of"),
        (dict(WORLD_SIZE="3"), "must divide 8"),
        (dict(ITERATIONS="ten"), "not a valid int"),
        (dict(TOKENIZER_PATH=str(tmp_path / "x.model")), "does not exist"),
    ]
    for over, message in cases:
        res = run_script(data_env(dataset, **over), tmp_path)
        assert res.returncode == 2, (over, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), (over, lines)
    assert not (tmp_path / "logs").exists()  # nothing written before the configuration is known good


def test_real_environment_has_no_false_typo(tg):
    import os
    tg.Hyperparameters.from_env(os.environ)  # the machine's own variables are not mistaken for typos


# ---------------------------------------------------------------- runs

def parse_losses(text):
    return [float(m) for m in re.findall(r"step:\d+/\d+ train_loss:(\S+)", text)]


def test_two_processes_match_one(dataset, tmp_path):
    one = run_script(data_env(dataset, "one"), tmp_path)
    two = run_script(data_env(dataset, "two"), tmp_path, nproc=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    l1, l2 = parse_losses(one.stdout), parse_losses(two.stdout)
    assert len(l1) == len(l2) == 3
    assert np.allclose(l1, l2, atol=2e-4), (l1, l2)
    j1 = json.loads((tmp_path / "logs/one.json").read_text())
    j2 = json.loads((tmp_path / "logs/two.json").read_text())
    assert j2["world_size"] == 2 and j1["world_size"] == 1
    assert abs(j1["final"]["val_loss"] - j2["final"]["val_loss"]) < 1e-3


def test_end_to_end_scores_the_reloaded_artifact(tg, dataset, tmp_path):
    res = run_script(data_env(dataset, "e2e"), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "logs/e2e.txt").read_text()
    summary = json.loads((tmp_path / "logs/e2e.json").read_text())
    for key in ("code_sha256", "code_bytes", "model_bytes", "artifact_bytes", "config", "steps", "train_time_ms",
                "eval_time_ms", "scores", "final", "num_params", "attention_kernel", "compile_mode"):
        assert key in summary
    assert summary["status"] == "complete" and summary["steps"] == 3
    assert re.search(r"^config:\{", log, re.M) and "attention:sdpa compile:none" in log
    assert f"Total submission size int6+zstd: {summary['artifact_bytes']} bytes" in log
    artifact = tmp_path / summary["artifact_path"]
    assert summary["model_bytes"] == artifact.stat().st_size
    assert summary["artifact_bytes"] == summary["model_bytes"] + summary["code_bytes"]
    m = re.search(r"^final_int6_sliding_window_exact val_loss:(\S+) val_bpb:(\S+)$", log, re.M)
    assert m and float(m.group(2)) == pytest.approx(summary["final"]["val_bpb"], abs=1e-8)
    # re-score the artifact independently: the reported score is the reloaded model's
    state, meta = tg.unpack_artifact(artifact.read_bytes())
    args = tg.Hyperparameters.from_env({k: str(v) for k, v in meta["config"].items()})
    model = tg.build_model(args)
    model.load_state_dict(state)
    data_path, tok = dataset
    val = tg.load_shard(data_path / "fineweb_val_000000.bin")
    nll = tg.score_nll(model, torch.from_numpy(val.astype(np.int64)), 64, 32, batch_seqs=256)
    tables = tg.byte_tables(spm.SentencePieceProcessor(model_file=str(tok)))
    bpb = nll.sum().item() / math.log(2) / tg.target_bytes(val, tables).sum()
    assert bpb == pytest.approx(float(m.group(2)), abs=1e-7)
    assert summary["unigram_val_bpb"] > float(m.group(2)) - 1  # sanity: a reference is reported


def test_over_budget_run_says_so_and_fails(tg, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, v in data_env(dataset, "big", ITERATIONS=1, FLOAT_EVAL=0).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tg, "ARTIFACT_LIMIT", 10_000)
    assert tg.main() == 1
    log = (tmp_path / "logs/big.txt").read_text().splitlines()
    assert log[-1].startswith("error: artifact is ") and "over the 10000-byte limit" in log[-1]
    assert json.loads((tmp_path / "logs/big.json").read_text())["over_budget"] is True


def test_readme_lists_every_flag():
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    import flags_table
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert flags_table.readme_with_table(text) == text, "run: python scripts/flags_table.py --write"
