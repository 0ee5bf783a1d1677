"""train_gpt.py scores CaseOps data with the val byte sidecar (issue 15): every scorer sums the sidecar over the
scored targets, the log names the byte source, a tokenizer with the operator pieces and no sidecar is refused, so is a
sidecar that does not fit the val stream; VOCAB_SIZE=8192 end to end (embedding, export, PPMC, TTT)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from conftest import ROOT, TINY_ENV, cli_in_process, data_env, run_script
from data.shards import read_shard, write_shard


@pytest.fixture(scope="module")
def caseops8192(tmp_path_factory):
    """The embedded corpus through --caseops at vocabulary 8192 (30 val documents)."""
    out = tmp_path_factory.mktemp("caseops8192")
    subprocess.run([sys.executable, "-m", "data.prepare", "--caseops", "--vocab-size", "8192", "--val-docs", "30",
                    "--out-dir", str(out)], cwd=ROOT, check=True, capture_output=True)
    return out / "datasets/wiki_sp8192_caseops", out / "tokenizers/wiki_8192_bpe_caseops.model"


def copy_data(src: Path, dst: Path, drop=()) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name not in drop:
            shutil.copy(p, dst / p.name)
    return dst


def args_for(tg, data_path, tok, **over):
    vocab = spm.SentencePieceProcessor(model_file=str(tok)).vocab_size()
    return tg.Hyperparameters.from_env(data_env((data_path, tok), VOCAB_SIZE=vocab, **over))


def test_read_val_takes_the_sidecar(tg, caseops8192):
    data_path, tok = caseops8192
    ids, per_target, source = tg.read_val(args_for(tg, data_path, tok))
    side = read_shard(data_path / "fineweb_val_bytes_000000.bin")
    assert source == "sidecar fineweb_val_bytes_000000.bin"
    assert ids.size == side.size and per_target.tolist() == side[1:].tolist()
    table = tg.target_bytes(ids, tg.byte_tables(spm.SentencePieceProcessor(model_file=str(tok))))
    ops = np.isin(ids[1:], [4, 5, 6, 7])
    assert ops.sum() > 100 and (table[ops] == 3).all() and (per_target[ops] == 0).all()  # the byte table's error
    assert per_target.sum() == json.loads((data_path / "manifest.json").read_text())["val_bytes"]
    # the val split is the val shard only: the sidecar is not read as a second val shard
    assert [p.name for p in tg.shard_files(str(data_path), "val")] == ["fineweb_val_000000.bin"]


def test_plain_data_keeps_the_byte_table(tg, dataset):
    data_path, tok = dataset
    ids, per_target, source = tg.read_val(args_for(tg, data_path, tok))
    assert source == "byte_table"
    assert per_target.tolist() == tg.target_bytes(ids, tg.byte_tables(spm.SentencePieceProcessor(model_file=str(tok)))).tolist()


def refuse(tg, monkeypatch, tmp_path, env) -> str:
    """cli() with `env`: one error line, exit 2, nothing written; returns the line."""
    rc, err = cli_in_process(tg, monkeypatch, tmp_path, env)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "logs").exists() and not (tmp_path / "artifacts").exists()
    return lines[0]


def test_operator_tokenizer_without_sidecar_refused(tg, caseops8192, tmp_path, monkeypatch):
    data_path, tok = caseops8192
    bare = copy_data(data_path, tmp_path / "bare", drop=("fineweb_val_bytes_000000.bin", "manifest.json"))
    env = {**TINY_ENV, "DATA_PATH": bare, "TOKENIZER_PATH": tok, "VOCAB_SIZE": 8192, "RUN_ID": "x"}
    line = refuse(tg, monkeypatch, tmp_path, env)
    assert f"TOKENIZER_PATH={tok} holds the CaseOps operators (ids [4, 5, 6, 7]) but DATA_PATH={bare} has no val " \
           "byte sidecar" in line


def test_caseops_enabled_requires_a_sidecar(tg, dataset, tmp_path, monkeypatch):
    data_path, tok = dataset
    env = {**TINY_ENV, "DATA_PATH": data_path, "TOKENIZER_PATH": tok, "RUN_ID": "x", "CASEOPS_ENABLED": 1}
    assert "error: CASEOPS_ENABLED=1 but DATA_PATH=" in refuse(tg, monkeypatch, tmp_path, env)


@pytest.mark.parametrize("fault", ["short", "long", "bytes at BOS", "bytes at an operator"])
def test_sidecar_that_does_not_fit_is_refused(tg, caseops8192, tmp_path, monkeypatch, fault):
    data_path, tok = caseops8192
    bad = copy_data(data_path, tmp_path / "bad", drop=("manifest.json",))
    side_path = bad / "fineweb_val_bytes_000000.bin"
    side, ids = read_shard(side_path).astype(np.int64), read_shard(bad / "fineweb_val_000000.bin")
    if fault == "short":
        side = side[:-1]
    elif fault == "long":
        side = np.concatenate([side, [1]])
    elif fault == "bytes at BOS":
        side[np.flatnonzero(ids == 1)[3]] = 1
    else:
        side[np.flatnonzero(ids == 4)[0]] = 1
    write_shard(side_path, side)
    env = {**TINY_ENV, "DATA_PATH": bad, "TOKENIZER_PATH": tok, "VOCAB_SIZE": 8192, "RUN_ID": "x"}
    line = refuse(tg, monkeypatch, tmp_path, env)
    assert f"the val byte sidecar of DATA_PATH={bad} (1 file(s), {side.size} entries) does not fit its {ids.size} " \
           "val tokens" in line


def test_every_scorer_sums_the_sidecar_at_vocab_8192(tg, caseops8192, tmp_path):
    """One tiny CPU run at VOCAB_SIZE=8192 on CaseOps data with PPMC and TTT: the log names the sidecar, and every
    final score (sliding window, PPM mix, TTT, TTT + PPM, the unigram reference) is its mean loss over the sidecar's
    bytes of the scored targets, not over the byte table's."""
    data_path, tok = caseops8192
    env = {**TINY_ENV, "DATA_PATH": str(data_path), "TOKENIZER_PATH": str(tok), "VOCAB_SIZE": "8192",
           "RUN_ID": "v8k", "PPMC": "1", "TTT": "1", "TTT_CHUNK_TOKENS": "2048", "TTT_EPOCHS": "1", "ITERATIONS": "2",
           "TRAIN_BATCH_TOKENS": "1024", "EVAL_STRIDE": "64", "FLOAT_EVAL": "0"}
    res = run_script(env, tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "logs/v8k.txt").read_text()
    summary = json.loads((tmp_path / "logs/v8k.json").read_text())
    assert "val_byte_source:sidecar fineweb_val_bytes_000000.bin" in log.splitlines()
    ids = read_shard(data_path / "fineweb_val_000000.bin")
    side = read_shard(data_path / "fineweb_val_bytes_000000.bin").astype(np.int64)
    table = tg.target_bytes(ids, tg.byte_tables(spm.SentencePieceProcessor(model_file=str(tok))))
    n, side_bytes = ids.size - 1, side[1:].sum()
    assert f"val_tokens:{ids.size} val_bytes:{side_bytes} " in log and table.sum() > side_bytes * 1.05
    names = {"sliding_window", "sliding_window_ppmc", "ttt", "ttt_ppmc"}
    assert names <= set(summary["scores"])
    for name in names:  # every target scored once: bpb = mean nll / ln 2 * targets / bytes
        s = summary["scores"][name]
        assert s["val_bpb"] == pytest.approx(s["val_loss"] / math.log(2) * n / side_bytes, rel=1e-9), name
    counts = np.bincount(read_shard(data_path / "fineweb_train_000000.bin"), minlength=8192) + 1.0
    unigram = -np.log(counts / counts.sum())[ids[1:].astype(np.int64)].sum() / math.log(2) / side_bytes
    assert summary["unigram_val_bpb"] == pytest.approx(unigram, rel=1e-9)
    artifact = tmp_path / summary["artifact_path"]
    state, meta = tg.unpack_artifact(artifact.read_bytes())
    assert state["tok_emb.weight"].shape[0] == 8192 and meta["config"]["VOCAB_SIZE"] == 8192


def test_bench_scores_with_the_sidecar_too(tg, caseops8192):
    """The benchmarks' byte counts (bench.common.val_target_bytes) are the run's: the sidecar, also for a val stream
    cut short."""
    from bench import common
    data, tok = caseops8192
    hp = tg.Hyperparameters.from_env({"DATA_PATH": str(data), "TOKENIZER_PATH": str(tok), "VOCAB_SIZE": "8192"})
    sp = tg.load_tokenizer(hp)
    val = common.load_val(tg, data)
    want = tg.val_byte_counts(hp, val, sp)[0]
    assert np.array_equal(common.val_target_bytes(tg, hp, sp, val, data), want)
    assert np.array_equal(common.val_target_bytes(tg, hp, sp, val[:500], data), want[:499])
    assert not np.array_equal(want, tg.target_bytes(val, tg.byte_tables(sp)))  # the byte table would differ
