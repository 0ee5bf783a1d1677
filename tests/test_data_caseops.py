"""CaseOps in data/: the transform and its inverse, the reserved-operator tokenizer, the val byte sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from data import caseops, prepare
from data.bytes import byte_table_from_sentencepiece, count_bytes
from data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE
from data.manifest import sha256_file
from data.shards import HEADER_BYTES, read_header, read_shard
from data.sources import clean_text, load_wiki, split_docs, wiki_summaries_path

BOS = 1


def docs_of(stream: np.ndarray, *aligned: np.ndarray):
    """(tokens, *aligned slices) of each BOS-delimited document of ``stream`` (BOS included)."""
    starts = list(np.flatnonzero(stream == BOS)) + [stream.size]
    assert starts[0] == 0
    return [tuple(a[s:e] for a in (stream, *aligned)) for s, e in zip(starts[:-1], starts[1:])]


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("text, expected", [
    ("", ""),
    ("plain words, 42 digits.", "plain words, 42 digits."),
    ("The", TITLE + "the"),
    ("A b", TITLE + "a b"),
    ("NASA", ALLCAPS + "nasa"),
    ("McDonald", TITLE + "mc" + CAPNEXT + "donald"),
    ("iPhone", "i" + CAPNEXT + "phone"),
    ("ABc", TITLE + "a" + CAPNEXT + "bc"),
    ("X1Y", TITLE + "x1" + TITLE + "y"),
    ("Élan Été", "Élan Été"),  # non-ASCII letters are left alone; 'lan' after É is a lower-case run
    ("naïve CAFÉ", "na\u00efve " + ALLCAPS + "caf\u00c9"),
    (TITLE + "x" + ESC, ESC + TITLE + "x" + ESC + ESC),
])
def test_transform_examples(text, expected):
    assert caseops.encode(text) == expected
    assert caseops.decode(expected) == text


def test_round_trip_every_embedded_document():
    docs = load_wiki(wiki_summaries_path())
    assert len(docs) == 10033
    changed = 0
    for doc in docs:
        enc = caseops.encode(doc)
        assert caseops.decode(enc) == doc
        assert not any("A" <= ch <= "Z" for ch in enc)  # no ASCII capital survives
        assert caseops.byte_costs(enc.encode("utf-8")).sum() == len(doc.encode("utf-8"))
        changed += enc != doc
    assert changed > 9000  # almost every lead section has a capital


ALPHABET = st.sampled_from(list("aAbZzQ \n\t1_-.'") + [TITLE, ALLCAPS, CAPNEXT, ESC, "é", "Ж", "Ａ", "\U0001f992", "\u200b"])


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join) | st.text(max_size=60))
def test_round_trip_adversarial(text):
    enc = caseops.encode(text)
    assert caseops.decode(enc) == text
    assert caseops.byte_costs(enc.encode("utf-8")).sum() == len(text.encode("utf-8"))
    ops = sum(enc.count(op) for op in (TITLE, ALLCAPS, CAPNEXT)) + enc.count(ESC)
    assert len(enc) >= len(text) and len(enc) - len(text) <= ops


@pytest.mark.parametrize("bad", [TITLE, TITLE + "1", ALLCAPS + " x", "a" + CAPNEXT, CAPNEXT + "a", ESC,
                                 "Upper", TITLE + TITLE + "a", "x" + TITLE + "y", ALLCAPS + "a" + CAPNEXT + "b"])
def test_decode_refuses_what_encode_never_writes(bad):
    with pytest.raises(caseops.CaseOpsError):
        caseops.decode(bad)


def test_token_original_bytes_spans():
    text = (TITLE + "ab" + ESC + TITLE + "é").encode("utf-8")  # from "Ab" + literal U+E001 + "é"
    # spans: [TITLE] [ab] [ESC] [literal] [é]
    spans = [(0, 3), (3, 5), (5, 8), (8, 11), (11, 13)]
    assert caseops.token_original_bytes(text, spans).tolist() == [0, 2, 0, 3, 2]
    assert caseops.token_original_bytes(text, [(0, 0), (0, 13)]).tolist() == [0, 7]


# ----------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """1,500 embedded documents as a JSONL file, built twice: plain and --caseops (vocabulary 512)."""
    tmp = tmp_path_factory.mktemp("caseops")
    docs = load_wiki(wiki_summaries_path())[::6][:1500]
    src = tmp / "lead.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    out = tmp / "out"
    base = ["--input", str(src), "--out-dir", str(out), "--vocab-size", "512"]
    assert prepare.main(base + ["--caseops"]) == 0
    assert prepare.main(base) == 0
    cleaned = [d for d in (clean_text(d) for d in docs) if d]
    val, train = split_docs(cleaned, 1337, 0.05)
    return {"out": out, "val": val, "train": train, "src": src,
            "case": out / "datasets/lead_sp512_caseops", "plain": out / "datasets/lead_sp512",
            "case_model": out / "tokenizers/lead_512_bpe_caseops.model", "plain_model": out / "tokenizers/lead_512_bpe.model"}


def test_caseops_layout_and_manifest(corpus):
    folder = corpus["case"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "manifest.json"]
    m = json.loads((folder / "manifest.json").read_text())
    side = folder / "fineweb_val_bytes_000000.bin"
    assert m["val_bytes_file"] == [side.name] and m["val_bytes_sha256"] == [sha256_file(side)]
    assert m["shards"][side.name] == sha256_file(side) and m["shard_tokens"][side.name] == m["val_tokens"]
    assert m["text_transform"] == "lossless_caps_caseops_v1" and m["val_bytes_source"] == "sidecar"
    assert m["tokenizer"]["file"] == "tokenizers/lead_512_bpe_caseops.model"
    assert m["tokenizer"]["sha256"] == sha256_file(corpus["case_model"])
    assert m["tokenizer"]["reserved_ids"] == {"4": TITLE, "5": ALLCAPS, "6": CAPNEXT, "7": ESC}
    assert m["tokenizer"]["trainer"]["user_defined_symbols"] == [TITLE, ALLCAPS, CAPNEXT, ESC]
    assert m["val_bytes"] == int(read_shard(side).sum())
    # the plain build of the same documents is untouched by the option
    mp = json.loads((corpus["plain"] / "manifest.json").read_text())
    assert "val_bytes_file" not in mp and "text_transform" not in mp and mp["docs_val"] == m["docs_val"]


def test_caseops_tokenizer_reserves_operators(corpus):
    sp = spm.SentencePieceProcessor(model_file=str(corpus["case_model"]))
    assert [sp.id_to_piece(i) for i in range(8)] == ["<pad>", "<s>", "</s>", "<unk>", TITLE, ALLCAPS, CAPNEXT, ESC]
    assert caseops.reserved_operator_ids(sp) == {4: TITLE, 5: ALLCAPS, 6: CAPNEXT, 7: ESC}
    assert all(sp.is_byte(i) for i in range(8, 264)) and sp.id_to_piece(8) == "<0x00>"
    # the official settings otherwise: split digits, no dummy prefix, byte fallback, NFKC
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]
    assert sp.encode(TITLE + "the" + ALLCAPS + "x")[0] == 4 and 5 in sp.encode(TITLE + "the" + ALLCAPS + "x")
    assert sp.decode(sp.encode("\U0001f992")) == "\U0001f992"
    plain = spm.SentencePieceProcessor(model_file=str(corpus["plain_model"]))
    assert caseops.reserved_operator_ids(plain) == {}


def test_sidecar_counts_original_bytes(corpus):
    folder, val_docs = corpus["case"], corpus["val"]
    tokens = read_shard(folder / "fineweb_val_000000.bin")
    side = read_shard(folder / "fineweb_val_bytes_000000.bin")
    assert read_header(folder / "fineweb_val_bytes_000000.bin") == tokens.size
    assert (folder / "fineweb_val_bytes_000000.bin").stat().st_size == HEADER_BYTES + 2 * tokens.size
    assert (side[tokens == BOS] == 0).all() and (side[(tokens >= 4) & (tokens <= 7)] == 0).all()
    sp = spm.SentencePieceProcessor(model_file=str(corpus["case_model"]))
    per_doc = docs_of(tokens, side)
    assert len(per_doc) == len(val_docs)
    for doc, (ids, nbytes) in zip(val_docs, per_doc):
        assert ids[1:].tolist() == sp.encode(caseops.encode(doc))
        assert int(nbytes.sum()) == len(doc.encode("utf-8"))  # Σ sidecar = original UTF-8 bytes, per document
        assert caseops.decode(sp.decode(ids[1:].tolist())) == sp.decode(sp.encode(doc))  # up to NFKC only
    assert int(side.sum()) == sum(len(d.encode("utf-8")) for d in val_docs)


def test_same_documents_same_val_bytes_with_and_without_caseops(corpus):
    """Both builds count the bytes of the same text wherever the tokenizer's NFKC normaliser leaves a document
    unchanged; where it does not, the byte table counts the normalised text (the challenge's rule, as upstream) and
    the sidecar the original (as the CaseOps records), and the gap is exactly the normalisation's."""
    plain_sp = spm.SentencePieceProcessor(model_file=str(corpus["plain_model"]))
    table = byte_table_from_sentencepiece(plain_sp)
    plain_val = read_shard(corpus["plain"] / "fineweb_val_000000.bin")
    case_val = read_shard(corpus["case"] / "fineweb_val_000000.bin")
    side = read_shard(corpus["case"] / "fineweb_val_bytes_000000.bin")
    plain_docs, case_docs = docs_of(plain_val), docs_of(case_val, side)
    stable = equal = 0
    for doc, (p_ids,), (_, c_bytes) in zip(corpus["val"], plain_docs, case_docs):
        p = count_bytes(p_ids, table)
        normalised = len(plain_sp.decode(p_ids[1:].tolist()).encode("utf-8"))
        assert p == normalised and int(c_bytes.sum()) == len(doc.encode("utf-8"))
        if plain_sp.decode(plain_sp.encode(doc)) == doc:
            stable += 1
            equal += p == int(c_bytes.sum())
    assert stable >= 0.7 * len(corpus["val"]) and equal == stable
    mp = json.loads((corpus["plain"] / "manifest.json").read_text())
    mc = json.loads((corpus["case"] / "manifest.json").read_text())
    gap = sum(len(d.encode("utf-8")) - len(plain_sp.decode(plain_sp.encode(d)).encode("utf-8")) for d in corpus["val"])
    assert mc["val_bytes"] - mp["val_bytes"] == gap


def test_caseops_rerun_up_to_date_and_option_is_part_of_the_name(corpus, capsys):
    argv = ["--input", str(corpus["src"]), "--out-dir", str(corpus["out"]), "--vocab-size", "512", "--caseops"]
    capsys.readouterr()
    assert prepare.main(argv) == 0
    assert capsys.readouterr().out.startswith("up to date: ")


def test_caseops_flag_refused_for_fineweb(capsys):
    with pytest.raises(SystemExit) as info:
        prepare.parse_args(["--source", "fineweb", "--caseops"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--caseops does not apply to --source fineweb (fetch --variant sp8192_caseops" in err


def test_equivalence_bench_proto_shim_reads_sentencepiece(corpus):
    """bench/bench_caseops_equiv.py serves the record's encode_as_immutable_proto from SentencePiece's serialized
    proto: its pieces must be SentencePiece's own (ids, and surfaces = the input bytes each piece spans)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_caseops_equiv.py"
    spec = importlib.util.spec_from_file_location("bench_caseops_equiv", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sp = spm.SentencePieceProcessor(model_file=str(corpus["case_model"]))
    text = caseops.encode("The  NASA \u200bMcDonald's \U0001f992 caf\u00e9 \ufb01 x" + TITLE)
    proto = bench.immutable_proto_shim(sp, text)
    enc = sp.encode(text, out_type="offset_mapping", return_bytes=True)
    raw = text.encode("utf-8")
    assert [p.id for p in proto.pieces] == enc["ids"]
    assert [p.surface.encode("utf-8") for p in proto.pieces] == [raw[b:e] for b, e in enc["offsets"]]
