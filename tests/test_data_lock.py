"""One build of a dataset at a time, and recovery from an interrupted build (data/lock.py, issue 18 §2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from conftest import ROOT
from data.bytes import byte_table_from_sentencepiece, count_bytes
from data.lock import clean_interrupted, dataset_lock, lock_path
from data.manifest import sha256_file
from data.shards import read_header, read_shard
from data.sources import load_wiki, split_docs, wiki_summaries_path



@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("lock") / "lead.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for d in load_wiki(wiki_summaries_path())[:2500]:
            f.write(json.dumps({"text": d}) + "\n")
    return src


def prepare_cmd(src: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "data.prepare", "--input", str(src), "--out-dir", str(out), "--vocab-size", "512",
            "--name", "lead", *map(str, extra)]


def spawn(cmd, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log.with_suffix(".out"), "w"),
                            stderr=open(log.with_suffix(".err"), "w"))


def assert_consistent(out: Path, src: Path) -> dict:
    """The manifest describes exactly the files on disk, and its val bytes are those of its own tokenizer; the
    val shard holds the split its recorded seed gives."""
    folder = out / "datasets/lead_sp512"
    m = json.loads((folder / "manifest.json").read_text())
    model = out / m["tokenizer"]["file"]
    assert sha256_file(model) == m["tokenizer"]["sha256"]
    assert sha256_file(out / m["tokenizer"]["vocab_file"]) == m["tokenizer"]["vocab_sha256"]
    assert {p.name for p in folder.glob("fineweb_*.bin")} == set(m["shards"])
    for name, digest in m["shards"].items():
        assert sha256_file(folder / name) == digest
    sp = spm.SentencePieceProcessor(model_file=str(model))
    val = np.concatenate([read_shard(folder / n) for n in sorted(m["shards"]) if n.startswith("fineweb_val_")])
    assert count_bytes(val, byte_table_from_sentencepiece(sp)) == m["val_bytes"]
    docs = [json.loads(line)["text"].strip() for line in open(src, encoding="utf-8")]
    val_docs, _ = split_docs([d for d in docs if d], m["seed"], 0.05)
    assert sp.decode(val[1:].tolist()).startswith(sp.decode(sp.encode(val_docs[0])))
    assert not list(folder.glob(".*.tmp")) and not list((out / "tokenizers").glob(".lead*.tmp"))
    assert not lock_path(out, "lead_sp512").exists()
    return m


def test_lock_excludes_and_is_released(tmp_path, capsys):
    order = []
    inside = threading.Event()

    def holder():
        with dataset_lock(tmp_path, "x"):
            order.append("first in")
            inside.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(5)
    with dataset_lock(tmp_path, "x", wait_note="waiting for x"):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    assert capsys.readouterr().err == "waiting for x\n"
    assert not lock_path(tmp_path, "x").exists()
    # a lock file left by a killed holder (no process holds it) does not block
    lock_path(tmp_path, "x").write_text("12345\n")
    with dataset_lock(tmp_path, "x"):
        pass
    assert capsys.readouterr().err == "" and not lock_path(tmp_path, "x").exists()


def test_two_forced_builds_at_once_do_not_mix(corpus, tmp_path):
    out = tmp_path / "out"
    procs = []
    with dataset_lock(out, "lead_sp512"):  # both start while the lock is held, so they overlap for sure
        for seed in (1, 2):
            procs.append(spawn(prepare_cmd(corpus, out, "--seed", seed, "--force"), tmp_path / f"b{seed}"))
        deadline = time.time() + 60
        while time.time() < deadline and not all(
                "waiting for another build of lead_sp512" in (tmp_path / f"b{s}.err").read_text() for s in (1, 2)):
            time.sleep(0.05)
    for p in procs:
        assert p.wait(timeout=300) == 0
    for s in (1, 2):
        assert (tmp_path / f"b{s}.out").read_text().startswith("done: lead_sp512")
        assert (tmp_path / f"b{s}.err").read_text() == "waiting for another build of lead_sp512 to finish ...\n"
    m = assert_consistent(out, corpus)
    assert m["seed"] in (1, 2)


def test_kill_9_mid_build_then_next_run_recovers(corpus, tmp_path):
    out = tmp_path / "out"
    folder, toks = out / "datasets/lead_sp512", out / "tokenizers"
    # a complete build first, then a forced rebuild with other settings killed in the middle
    assert subprocess.run(prepare_cmd(corpus, out, "--max-shard-tokens", 20000), cwd=ROOT,
                          capture_output=True).returncode == 0
    model = toks / "lead_512_bpe.model"
    before = model.stat().st_mtime_ns
    p = spawn(prepare_cmd(corpus, out, "--max-shard-tokens", 20000, "--seed", 5, "--force"), tmp_path / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and (not model.exists() or model.stat().st_mtime_ns == before):
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    # nothing half-written: no manifest describing replaced files, every visible shard whole
    assert not (folder / "manifest.json").exists()
    for shard in folder.glob("fineweb_*.bin"):
        read_header(shard)
    spm.SentencePieceProcessor(model_file=str(model))
    # temp files as a kill during a write leaves them (one of another dataset's, which must stay)
    (folder / ".fineweb_train_000003.bin.99999.tmp").write_bytes(b"\0" * 100)
    (toks / ".lead_512_bpe.model.99999.tmp").write_bytes(b"half")
    (toks / ".other_512_bpe.model.99999.tmp").write_bytes(b"not ours")
    lock_path(out, "lead_sp512").write_text(f"{p.pid}\n")  # as the killed holder left it
    res = subprocess.run(prepare_cmd(corpus, out, "--max-shard-tokens", 20000, "--seed", 5), cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("done: lead_sp512"), res.stderr
    assert (toks / ".other_512_bpe.model.99999.tmp").exists()
    m = assert_consistent(out, corpus)
    assert m["seed"] == 5 and len(m["shards"]) > 3
    res = subprocess.run(prepare_cmd(corpus, out, "--max-shard-tokens", 20000, "--seed", 5), cwd=ROOT,
                         capture_output=True, text=True)
    assert res.stdout.startswith("up to date: ")


def test_clean_interrupted_only_touches_its_own(tmp_path):
    folder, toks = tmp_path / "datasets/a_sp8", tmp_path / "tokenizers"
    folder.mkdir(parents=True)
    toks.mkdir()
    for p in (folder / ".fineweb_val_000000.bin.12.tmp", folder / ".manifest.json.3.tmp",
              toks / ".a_8_bpe.model.7.tmp", toks / ".a_8_bpe.vocab.7.tmp", toks / ".b_8_bpe.model.7.tmp",
              toks / "a_8_bpe.model", folder / "fineweb_val_000000.bin"):
        p.write_bytes(b"x")
    removed = clean_interrupted(folder, [toks / "a_8_bpe.model", toks / "a_8_bpe.vocab"])
    assert sorted(p.name for p in removed) == [".a_8_bpe.model.7.tmp", ".a_8_bpe.vocab.7.tmp",
                                               ".fineweb_val_000000.bin.12.tmp", ".manifest.json.3.tmp"]
    assert sorted(p.name for p in toks.iterdir()) == [".b_8_bpe.model.7.tmp", "a_8_bpe.model"]
    assert sorted(p.name for p in folder.iterdir()) == ["fineweb_val_000000.bin"]


@pytest.mark.parametrize("kind", ["folder", "loop"])
def test_odd_entry_named_like_a_shard_refused(corpus, tmp_path, kind):
    out = tmp_path / "out"
    folder = out / "datasets/lead_sp512"
    folder.mkdir(parents=True)
    odd = folder / "fineweb_train_000007.bin"
    if kind == "folder":
        odd.mkdir()
    else:
        odd.symlink_to(odd)
    res = subprocess.run(prepare_cmd(corpus, out), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith(f"error: {odd} is named like a shard but is not a regular file")
    assert not (out / "tokenizers").exists() and not lock_path(out, "lead_sp512").exists()
