"""The core of train_gpt.py: configuration checks, exact byte accounting, sliding-window scoring, the artifact,
distributed equivalence and the end-to-end run."""
import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import ROOT, cli_in_process, data_env, reload_artifact, run_script, set_run_env, start_script, tiny_args
from data.shards import encode_shard


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
    state, roles = model.state_dict(), tg.param_roles(model)
    blob = tg.pack_artifact(state, args, {"config": args.as_dict()}, roles)
    loaded, meta = tg.unpack_artifact(blob)
    assert meta["config"]["MODEL_DIM"] == 64 and set(loaded) == set(state)
    for name, t in state.items():
        arrays = tg.export_arrays(name, t, roles[name], args)
        if "q" in arrays:  # each row: q * its scale exactly, within half of ITS step wherever the row was not clipped
            scale = arrays["scale"].float()[:, None]
            torch.testing.assert_close(loaded[name], arrays["q"].float() * scale, rtol=0, atol=0)
            inside = t.abs() <= 31 * scale
            assert inside.float().mean() > 0.99, name
            assert ((loaded[name] - t).abs() <= scale / 2 + 1e-7)[inside].all(), name
        elif arrays["data"].dtype == torch.float32:
            assert torch.equal(loaded[name], t.float()), name
        else:  # fp16: within fp16 rounding
            torch.testing.assert_close(loaded[name], t.half().float(), rtol=0, atol=0)
    w = torch.randn(64, 300)
    w[0, 0] = 40.0  # an outlier: clipping it must win on that row
    q, scale = tg.quantize_rows(w, 6)
    assert q.min() >= -32 and q.max() <= 31
    err = ((q.float() * scale.float()[:, None]) - w).square().sum(1)
    s1 = (w.abs().amax(1) / 31).half()
    plain = (torch.clamp(torch.round(w / s1.float()[:, None]), -32, 31) * s1.float()[:, None] - w).square().sum(1)
    assert torch.all(err <= plain + 1e-6) and err[0] < plain[0]
    q5, _ = tg.quantize_rows(w, 5)
    assert q5.min() >= -16 and q5.max() <= 15


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty", "appended"])
def test_damaged_artifact_fails_clearly(tg, damage):
    args = tiny_args(tg)
    blob = tg.pack_artifact(tg.build_model(args).state_dict(), args, {})
    bad = {"truncate": blob[: len(blob) // 2], "flip": blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:],
           "foreign": b"PK\x03\x04" + blob[4:], "empty": b"", "appended": blob + b"\0" * 7}[damage]
    with pytest.raises(tg.ConfigError, match="corrupted|not a train_gpt.py artifact"):
        tg.unpack_artifact(bad, "x.ptz")


# ---------------------------------------------------------------- bad input: one line, exit 2, before any work

@pytest.fixture(scope="module")
def bad_inputs(dataset, tmp_path_factory):
    """Data folders with one fault each (the val split and tokenizer are the good ones)."""
    data_path, tok = dataset
    root = tmp_path_factory.mktemp("bad_inputs")
    val = (data_path / "fineweb_val_000000.bin").read_bytes()
    train = (data_path / "fineweb_train_000000.bin").read_bytes()

    def folder(name, train_blob=None, val_blob=val, dir_shard=False):
        d = root / name
        d.mkdir()
        (d / "fineweb_val_000000.bin").write_bytes(val_blob)
        if dir_shard:
            (d / "fineweb_train_000000.bin").mkdir()
        else:
            (d / "fineweb_train_000000.bin").write_bytes(train if train_blob is None else train_blob)
        return str(d)
    manifest = json.loads((data_path / "manifest.json").read_text())
    other_tok = root / "other.model"  # the same vocabulary size, another tokenizer (trained on less text)
    import sentencepiece as spm_
    spm_.SentencePieceTrainer.train(sentence_iterator=iter(["word " * 50 + str(i) for i in range(2000)]),
                                    model_prefix=str(root / "other"), vocab_size=1024, model_type="bpe",
                                    byte_fallback=True, hard_vocab_limit=False, bos_id=1, eos_id=2, unk_id=3,
                                    pad_id=0, num_threads=1, minloglevel=2)
    (root / "x.model").write_bytes(b"this is not a SentencePiece model")
    with_manifest = folder("manifest")
    (Path(with_manifest) / "manifest.json").write_text(json.dumps(manifest))
    return {
        "truncated": folder("truncated", train[:5000], b"\0" * 2000),
        "big_id": folder("big_id", encode_shard([1, 5, 1023, 1024, 7])),
        "empty_train": folder("empty_train", encode_shard([])),
        "empty_val": folder("empty_val", val_blob=encode_shard([])),
        "dir_shard": folder("dir_shard", dir_shard=True),
        "manifest": with_manifest, "other_tok": str(other_tok), "not_sp": str(root / "x.model"),
    }


BAD_ENV = [  # (case, settings (values starting with @ name a bad_inputs entry), first line of stderr)
    ("typo", dict(NUM_LAYER="4"), r"did you mean NUM_LAYERS"),
    ("typo2", dict(VALUE_RESIDUALS="1"), r"did you mean VALUE_RESIDUAL"),
    ("abbreviation", dict(GATED_ATTN="1"), r"unknown setting GATED_ATTN='1': did you mean GATED_ATTENTION"),
    ("abbreviation2", dict(VALUE_RESID="1"), r"did you mean VALUE_RESIDUAL"),
    ("lower case", dict(value_residual="1"), r"value_residual='1' is not upper case: use VALUE_RESIDUAL"),
    ("vocab", dict(VOCAB_SIZE="2048"), r"has 1024 pieces but VOCAB_SIZE=2048"),
    ("no folder", dict(DATA_PATH="@nope"), r"is not a folder"),
    ("truncated shard", dict(DATA_PATH="@truncated"), r"truncated or corrupted|magic"),
    ("batch", dict(TRAIN_BATCH_TOKENS="1000"), r"TRAIN_BATCH_TOKENS=1000 must be a multiple of"),
    ("world", dict(WORLD_SIZE="3"), r"must divide 8"),
    ("not an int", dict(ITERATIONS="ten"), r"ITERATIONS='ten' is not a valid int"),
    ("no tokenizer", dict(TOKENIZER_PATH="@nope"), r"does not exist"),
    ("not a tokenizer", dict(TOKENIZER_PATH="@not_sp"), r"is not a SentencePiece model"),
    ("other tokenizer", dict(DATA_PATH="@manifest", TOKENIZER_PATH="@other_tok"),
     r"is not the tokenizer that made the shards"),
    ("layers 0", dict(NUM_LAYERS="0"), r"^error: NUM_LAYERS=0 is out of range"),
    ("layers -1", dict(NUM_LAYERS="-1"), r"^error: NUM_LAYERS=-1 is out of range"),
    ("heads 0", dict(NUM_HEADS="0"), r"^error: NUM_HEADS=0 is out of range"),
    ("kv heads 0", dict(NUM_KV_HEADS="0"), r"^error: NUM_KV_HEADS=0 is out of range"),
    ("dim 0", dict(MODEL_DIM="0"), r"^error: MODEL_DIM=0 is out of range"),
    ("dim -16", dict(MODEL_DIM="-16"), r"^error: MODEL_DIM=-16 is out of range"),
    ("seq 0", dict(TRAIN_SEQ_LEN="0"), r"^error: TRAIN_SEQ_LEN=0 is out of range"),
    ("seq -64", dict(TRAIN_SEQ_LEN="-64"), r"^error: TRAIN_SEQ_LEN=-64 is out of range"),
    ("batch 0", dict(TRAIN_BATCH_TOKENS="0"), r"^error: TRAIN_BATCH_TOKENS=0 is out of range"),
    ("iterations inf", dict(ITERATIONS="inf"), r"^error: ITERATIONS='inf' must be a whole number"),
    ("iterations -5", dict(ITERATIONS="-5"), r"^error: ITERATIONS=-5 is out of range"),
    ("mlp inf", dict(MLP_MULT="inf"), r"^error: MLP_MULT='inf' must be a finite number"),
    ("eval batch 0", dict(EVAL_BATCH_SEQS="0"), r"^error: EVAL_BATCH_SEQS=0 is out of range"),
    ("zstd 23", dict(ZSTD_LEVEL="23"), r"^error: ZSTD_LEVEL=23 is out of range"),
    ("ttt chunk 0", dict(TTT="1", TTT_CHUNK_TOKENS="0"), r"^error: TTT_CHUNK_TOKENS=0 is out of range"),
    ("run id path", dict(RUN_ID="../../x"), r"RUN_ID='../../x' must be a name"),
    ("run id sub", dict(RUN_ID="sub/x"), r"RUN_ID='sub/x' must be a name"),
    ("train id >= vocab", dict(DATA_PATH="@big_id"), r"holds token id 1024 >= VOCAB_SIZE=1024"),
    ("empty train shard", dict(DATA_PATH="@empty_train"), r"promises 0 tokens.*empty, truncated"),
    ("empty val shard", dict(DATA_PATH="@empty_val"), r"promises 0 tokens.*empty, truncated"),
    ("directory shard", dict(DATA_PATH="@dir_shard"), r"is not a regular file"),
]


@pytest.mark.parametrize("case,over,message", BAD_ENV, ids=[c[0] for c in BAD_ENV])
def test_bad_input_one_line_exit_2_nothing_written(tg, dataset, bad_inputs, tmp_path, monkeypatch, case, over,
                                                     message):
    """The entry point (cli) in this process: one `error:` line naming the right setting, exit 2, no log, no
    artifact (a case that got past the checks would train and fail the last assertion)."""
    env = data_env(dataset, "bad", **{k: (bad_inputs.get(v[1:], str(tmp_path / v[1:])) if v.startswith("@")
                                          else v) for k, v in over.items()})
    rc, err = cli_in_process(tg, monkeypatch, tmp_path, env)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines
    assert not (tmp_path / "logs").exists() and not (tmp_path / "artifacts").exists()


def test_every_setting_out_of_its_range_is_refused_by_name(tg):
    """Derived from the declarations: a value outside each setting's choices or range is refused when read,
    naming that setting, before check_config or any step."""
    for s in tg.SETTINGS:
        bad = []
        if s.choices:
            bad.append("bogus" if s.type is str else str(max(s.choices) + 7))
        if s.rng:
            lo, hi, lo_in, hi_in = s.bounds()
            if math.isfinite(lo):
                bad.append(str(lo - 1 if s.type is int else lo - 1e-3 if lo_in else lo))
            if math.isfinite(hi):
                bad.append(str(int(hi) + 1 if s.type is int else hi + 1e-3 if hi_in else hi))
        if s.type is not str:
            bad.append("nan")
        for value in bad:
            with pytest.raises(tg.ConfigError, match=rf"^{s.name}=") as err:
                tg.Hyperparameters.from_env({s.name: value})
            assert "\n" not in str(err.value)


def test_unrelated_environment_is_not_a_typo(tg):
    """Variables of the shell, CI, CUDA, NCCL, torch and Hugging Face are not mistaken for settings."""
    env = {k: "1" for k in ("PATH", "HOME", "CI", "TERM", "USER", "LANG", "PWD", "SHELL", "CUDA_VISIBLE_DEVICES",
                            "NCCL_DEBUG", "NCCL_NET", "TORCH_HOME", "HF_HOME", "PYTHONPATH", "OMP_NUM_THREADS",
                            "LOCAL_RANK", "MASTER_PORT", "VIRTUAL_ENV", "TMPDIR", "DISPLAY", "EDITOR", "TZ")}
    args = tg.Hyperparameters.from_env(env)
    assert args.as_dict() | {"RUN_ID": ""} == tg.Hyperparameters.from_env({}).as_dict() | {"RUN_ID": ""}


def test_aliases_and_upstream_patterns(tg):
    """An alias sets its setting; two names for one setting must agree; upstream's name-pattern variables are read."""
    for alias, (s, mapping) in tg.ALIASES.items():
        raw = str(s.default) if mapping is None else next(iter(mapping))
        own = raw if mapping is None else mapping[raw]  # what the setting's own name would say
        assert getattr(tg.Hyperparameters.from_env({alias: raw}), s.name.lower()) == \
            getattr(tg.Hyperparameters.from_env({s.name: own}), s.name.lower())  # (EVAL_SEQ_LEN=0: TRAIN_SEQ_LEN)
    args = tiny_args(tg, CONTROL_TENSOR_NAME_PATTERNS="mlp.fc")
    roles = tg.param_roles(tg.build_model(args), args.control_tensor_name_patterns)
    assert roles["blocks.0.mlp.fc.weight"] == "control" and roles["blocks.0.attn.c_q.weight"] == "matrix"


# ---------------------------------------------------------------- runs

def parse_losses(text):
    return [float(m) for m in re.findall(r"step:\d+/\d+ train_loss:(\S+)", text)]


@pytest.fixture(scope="module")
def one_run(short_dataset, tmp_path_factory):
    """(folder, result) of one run of the tiny defaults in one process, RUN_ID=one (the two tests below check it)."""
    cwd = tmp_path_factory.mktemp("one_run")
    return cwd, run_script(data_env(short_dataset, "one"), cwd)


def test_two_processes_match_one(short_dataset, one_run, tmp_path):
    cwd, one = one_run
    two = run_script(data_env(short_dataset, "two"), tmp_path, nproc=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    l1, l2 = parse_losses(one.stdout), parse_losses(two.stdout)
    assert len(l1) == len(l2) == 3
    assert np.allclose(l1, l2, atol=2e-4), (l1, l2)
    j1 = json.loads((cwd / "logs/one.json").read_text())
    j2 = json.loads((tmp_path / "logs/two.json").read_text())
    assert j2["world_size"] == 2 and j1["world_size"] == 1
    assert abs(j1["final"]["val_loss"] - j2["final"]["val_loss"]) < 1e-3


def test_end_to_end_scores_the_reloaded_artifact(tg, short_dataset, one_run):
    tmp_path, res = one_run
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "logs/one.txt").read_text()
    summary = json.loads((tmp_path / "logs/one.json").read_text())
    for key in ("code_sha256", "code_bytes", "model_bytes", "artifact_bytes", "config", "steps", "train_time_ms",
                "eval_time_ms", "scores", "final", "num_params", "attention_kernel", "compile_mode"):
        assert key in summary
    assert summary["status"] == "complete" and summary["steps"] == 3
    assert re.search(r"^config:\{", log, re.M) and "attention:sdpa compile:none" in log
    assert f"Total submission size int6+{summary['config']['COMPRESSOR']}: {summary['artifact_bytes']} bytes" in log
    artifact = tmp_path / summary["artifact_path"]
    assert summary["model_bytes"] == artifact.stat().st_size
    assert summary["artifact_bytes"] == summary["model_bytes"] + summary["code_bytes"]
    m = re.search(r"^final_int6_sliding_window_exact val_loss:(\S+) val_bpb:(\S+)$", log, re.M)
    assert m and float(m.group(2)) == pytest.approx(summary["final"]["val_bpb"], abs=1e-8)
    # re-score the artifact independently: the reported score is the reloaded model's
    model, _, _ = reload_artifact(tg, artifact)
    data_path, tok = short_dataset
    val = tg.load_shard(data_path / "fineweb_val_000000.bin")
    nll = tg.score_nll(model, torch.from_numpy(val.astype(np.int64)), 64, 32, batch_seqs=256)
    tables = tg.byte_tables(spm.SentencePieceProcessor(model_file=str(tok)))
    bpb = nll.sum().item() / math.log(2) / tg.target_bytes(val, tables).sum()
    assert bpb == pytest.approx(float(m.group(2)), abs=1e-7)
    counts = np.bincount(tg.load_shard(data_path / "fineweb_train_000000.bin"), minlength=1024) + 1.0
    unigram = -np.log(counts / counts.sum())[val[1:].astype(np.int64)].sum() / math.log(2) / \
        tg.target_bytes(val, tables).sum()
    assert summary["unigram_val_bpb"] == pytest.approx(unigram, abs=1e-12)  # the add-one unigram of shard 0


def test_over_budget_run_says_so_and_fails(tg, short_dataset, tmp_path, monkeypatch):
    set_run_env(tg, monkeypatch, tmp_path, data_env(short_dataset, "big", ITERATIONS=1, FLOAT_EVAL=0))
    monkeypatch.setattr(tg, "ARTIFACT_LIMIT", 10_000)
    assert tg.main() == 1
    log = (tmp_path / "logs/big.txt").read_text().splitlines()
    assert log[-1].startswith("error: artifact is ") and "over the 10000-byte limit" in log[-1]
    assert json.loads((tmp_path / "logs/big.json").read_text())["over_budget"] is True


def test_readme_lists_every_flag():
    sys.path.insert(0, str(ROOT / "scripts"))
    import flags_table
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert flags_table.readme_with_table(text) == text, "run: python scripts/flags_table.py --write"


# ---------------------------------------------------------------- runs that cannot finish honestly

def test_nonfinite_score_fails_and_says_why(tg, short_dataset, tmp_path, monkeypatch):
    """A NaN score (here: the scorer's totals) is never `complete` with exit 0."""
    monkeypatch.setattr(tg, "reduce_score", lambda pos, nll, vb: (float("nan"), float("nan")))
    rc, _ = cli_in_process(tg, monkeypatch, tmp_path, data_env(short_dataset, "nan", ITERATIONS=1, FLOAT_EVAL=0))
    summary = json.loads((tmp_path / "logs/nan.json").read_text())
    assert rc == 1 and summary["status"] == "nonfinite_score"
    assert (tmp_path / "logs/nan.txt").read_text().splitlines()[-1].startswith(
        "error: score sliding_window is not finite")


def test_full_disk_while_writing_the_artifact(tg, short_dataset, tmp_path, monkeypatch):
    """ENOSPC during the artifact write: one error line, exit 1, no artifact and no temporary file left."""
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "artifacts" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(tg.os, "fsync", full)
    rc, err = cli_in_process(tg, monkeypatch, tmp_path, data_env(short_dataset, "full", ITERATIONS=1, FLOAT_EVAL=0))
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and re.match(r"error: cannot write artifacts/full.ptz \(No space left", lines[0])
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_eval_only_refuses_damaged_contents_and_keeps_the_training_log(tg, short_dataset, tmp_path, monkeypatch):
    """EVAL_ONLY of an artifact with a tensor missing or two shapes swapped: one line, exit 2. A good EVAL_ONLY run
    with the training run's RUN_ID writes logs/<RUN_ID>_eval.*, never over the training run's logs."""
    rc, _ = cli_in_process(tg, monkeypatch, tmp_path, data_env(short_dataset, "src", ITERATIONS=1, FLOAT_EVAL=0))
    assert rc == 0
    train_log = (tmp_path / "logs/src.txt").read_text()
    art = tmp_path / "artifacts/src.ptz"
    state, meta = tg.unpack_artifact(art.read_bytes())
    args = tg.Hyperparameters.from_env({k: str(v) for k, v in meta["config"].items()})
    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.q_gain"}
    swapped = dict(state)
    swapped["blocks.0.attn.c_k.weight"], swapped["blocks.0.attn.c_q.weight"] = state["blocks.0.attn.c_q.weight"], \
        state["blocks.0.attn.c_k.weight"]
    for name, st in (("missing", missing), ("swapped", swapped)):
        (tmp_path / f"{name}.ptz").write_bytes(tg.pack_artifact(st, args, meta))
        rc, err = cli_in_process(tg, monkeypatch, tmp_path,
                                 data_env(short_dataset, "ev", EVAL_ONLY=tmp_path / f"{name}.ptz"))
        assert rc == 2 and re.match(r"error: EVAL_ONLY=.* does not hold this model's tensors", err), err
    rc, _ = cli_in_process(tg, monkeypatch, tmp_path, data_env(short_dataset, "src", EVAL_ONLY=art))
    assert rc == 0 and (tmp_path / "logs/src.txt").read_text() == train_log
    assert json.loads((tmp_path / "logs/src_eval.json").read_text())["eval_only"] is True


def test_kill_9_leaves_nothing_half_written(tg, short_dataset, tmp_path):
    """kill -9 mid-training, then again as the export starts: never a summary JSON, never an artifact under its
    final name unless it is whole; the next run with the same RUN_ID removes what a killed write left
    (a planted `.tmp`) and completes."""
    env = data_env(short_dataset, "k9", FLOAT_EVAL=0)
    for iterations, marker in (("400", "step:3/"), ("2", "peak memory")):
        env["ITERATIONS"] = iterations
        proc = start_script(env, tmp_path, output=subprocess.DEVNULL)
        log = tmp_path / "logs/k9.txt"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and marker in log.read_text():
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "logs/k9.json").exists()
        for art in (tmp_path / "artifacts").glob("k9.ptz"):  # renamed before the kill: then it is whole
            tg.unpack_artifact(art.read_bytes())
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    (tmp_path / "artifacts/k9.ptz.99999.tmp").write_bytes(b"half")  # what a kill inside write_atomic leaves
    env["ITERATIONS"] = "1"
    res = run_script(env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["k9.ptz"]


def test_config_error_under_torchrun_is_one_line_once(short_dataset, tmp_path):
    """Two workers, one bad setting: rank 0 alone prints the error line (torchrun adds its own failure summary and
    exits 1); `--check`, which scripts/demo.sh runs before torchrun, gives the one line and exit 2."""
    res = run_script(data_env(short_dataset, "tr", NUM_LAYERS=0), tmp_path, nproc=2)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode != 0 and errors == ["error: NUM_LAYERS=0 is out of range: it must be in [1, inf)"]
    res = run_script(data_env(short_dataset, "tr", NUM_LAYERS=0), tmp_path, args=["--check"], timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [errors[0]]
    res = run_script(data_env(short_dataset, "tr", NUM_LAYERS=2), tmp_path, args=["--check"], timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "config ok" and not (tmp_path / "logs").exists()


def test_script_stays_reviewable():
    """The design rules a reviewer relies on: train_gpt.py under 2,500 lines, no function over 80."""
    source = (ROOT / "train_gpt.py").read_text(encoding="utf-8")
    assert len(source.splitlines()) < 2500
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long
