"""Equivalence of the kit's CaseOps build with the record's own preparation scripts, on the same documents.

    python bench/bench_caseops_equiv.py --record-dir DIR [--input FILE.jsonl|DIR] [--vocab-size V]
                                        [--work-dir DIR] [--json OUT]

DIR is a record folder holding ``lossless_caps.py`` and ``prepare_caseops_data.py`` (e.g. the challenge
repository's records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611); they are
loaded by path from there and never copied into the kit. The benchmark

1. builds the kit's CaseOps dataset (``python -m data.prepare --caseops``) from the embedded corpus (or --input)
   into the work folder;
2. writes the same documents, validation first, as the ``docs_selected.jsonl`` the record's script reads, and runs
   the record's ``prepare_caseops_data.py`` on them with the kit's tokenizer and ``--val-docs`` = the kit's
   validation count;
3. compares, document by document, the transformed text of ``data.caseops.encode`` with the record's
   ``encode_lossless_caps_v2`` and the inverse of each on the other's output; then the val tokens, the train
   tokens and the val byte sidecar element by element;
4. repeats the sidecar comparison with the record's shipped 8192-piece tokenizer (``tokenizers/*.model`` in DIR)
   when there is one: the kit's ``encode_split_caseops`` against the record's script, on the validation documents.

Only what cannot run here is replaced: sentencepiece 0.2.3 no longer has ``encode_as_immutable_proto``, so the
record's call is served by SentencePiece's own serialized proto (``out_type="serialized_proto"``), decoded by a
minimal protobuf reader below (the ``surface`` of each piece, as the immutable proto gave it). Exit status 0 when
everything agrees, 1 when something differs (the first difference is printed), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, BenchError, import_other, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))
RECORD_REMOTE_DIR = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"


# ------------------------------------------------------------------------------------------------------------------
# the shim: SentencePiece's serialized proto read back into objects with .pieces[i].surface/.id
# ------------------------------------------------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def immutable_proto_shim(self, text: str):
    """SentencePieceText {pieces = 2 {piece = 1, id = 2, surface = 3, begin = 4, end = 5}} as attribute objects."""
    pieces = []
    for field, value in _fields(self.encode(text, out_type="serialized_proto")):
        if field == 2:
            d = dict(_fields(value))
            pieces.append(SimpleNamespace(piece=d.get(1, b"").decode("utf-8"), id=int(d.get(2, 0)),
                                          surface=d.get(3, b"").decode("utf-8"), begin=int(d.get(4, 0)),
                                          end=int(d.get(5, 0))))
    return SimpleNamespace(pieces=pieces)


# ------------------------------------------------------------------------------------------------------------------


def load_record(record_dir: Path):
    for name in ("lossless_caps.py", "prepare_caseops_data.py"):
        if not (record_dir / name).is_file():
            raise BenchError(f"--record-dir {record_dir} has no {name}")
    lossless = import_other(record_dir / "lossless_caps.py", "--record-dir")
    sys.modules["lossless_caps"] = lossless  # the name prepare_caseops_data.py imports
    prep = import_other(record_dir / "prepare_caseops_data.py", "--record-dir")
    return lossless, prep


def read_concat(folder: Path, kind: str) -> np.ndarray:
    from data.shards import read_shard

    files = sorted(folder.glob(f"fineweb_{kind}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
    return np.concatenate([read_shard(p) for p in files]) if files else np.zeros(0, dtype=np.uint16)


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.size != b.size:
        return f"lengths {a.size:,} vs {b.size:,}"
    i = int(np.flatnonzero(a != b)[0])
    return f"first at {i:,}: {int(a[i])} vs {int(b[i])}"


def run_record_prep(prep, docs_jsonl: Path, out: Path, sp_model: Path, val_docs: int) -> Path:
    import sentencepiece as spm

    if not hasattr(spm.SentencePieceProcessor, "encode_as_immutable_proto"):
        spm.SentencePieceProcessor.encode_as_immutable_proto = immutable_proto_shim
    argv = sys.argv
    sys.argv = ["prepare_caseops_data.py", "--docs", str(docs_jsonl), "--out", str(out), "--sp", str(sp_model),
                "--val-docs", str(val_docs)]
    try:
        prep.main()
    finally:
        sys.argv = argv
    return out / "datasets" / RECORD_REMOTE_DIR


def compare_text(lossless, val_docs: list[str], train_docs: list[str]) -> dict:
    from data import caseops

    res = {"docs": 0, "transform_equal": 0, "record_inverts_kit": 0, "kit_inverts_record": 0, "first_diff": None}
    for doc in val_docs + train_docs:
        mine, theirs = caseops.encode(doc), lossless.encode_lossless_caps_v2(doc)
        res["docs"] += 1
        res["transform_equal"] += mine == theirs
        res["record_inverts_kit"] += lossless.decode_lossless_caps_v2(mine) == doc
        res["kit_inverts_record"] += caseops.decode(theirs) == doc
        if mine != theirs and res["first_diff"] is None:
            res["first_diff"] = doc[:200]
    return res


def compare_streams(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    out = {}
    for name, (kit, rec) in pairs.items():
        same = kit.size == rec.size and bool(np.array_equal(kit, rec))
        out[name] = {"kit": int(kit.size), "record": int(rec.size), "identical": same,
                     "sum_kit": int(kit.sum(dtype=np.int64)), "sum_record": int(rec.sum(dtype=np.int64)),
                     "difference": None if same else first_difference(kit, rec)}
    return out


def kit_build(args, work: Path) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "data.prepare", "--caseops", "--out-dir", str(work / "kit"),
           "--vocab-size", str(args.vocab_size)]
    if args.input:
        cmd += ["--input", str(args.input)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"the kit's build failed: {res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode}")
    folder = next((work / "kit" / "datasets").glob("*_caseops"))
    return folder, json.loads((folder / "manifest.json").read_text())


def kit_docs(args, manifest: dict) -> tuple[list[str], list[str]]:
    from data.documents import resolve_source
    from data.sources import clean_text, split_docs

    src_args = SimpleNamespace(source="local" if args.input else "wiki", input=args.input, text_field="text")
    docs = [d for d in (clean_text(d) for d in resolve_source(src_args).load()) if d]
    s = manifest["inputs"]["settings"]
    return split_docs(docs, s["seed"], s["val_fraction"], s["val_docs"], shuffle=s["shuffle"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record-dir", type=Path, required=True,
                    help="record folder with lossless_caps.py and prepare_caseops_data.py")
    ap.add_argument("--input", type=Path, default=None, help="JSONL or .txt folder (default: the embedded corpus)")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the builds here (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    a = ap.parse_args()
    lossless, prep = load_record(a.record_dir.resolve())
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="caseops_equiv_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        folder, manifest = kit_build(a, work)
        val_docs, train_docs = kit_docs(a, manifest)
        if len(val_docs) != manifest["docs_val"]:
            raise BenchError("the reconstructed split does not match the kit's manifest")
        docs_jsonl = work / "docs_selected.jsonl"
        with open(docs_jsonl, "w", encoding="utf-8") as f:
            for d in val_docs + train_docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
        model = work / "kit" / manifest["tokenizer"]["file"]
        rec = run_record_prep(prep, docs_jsonl, work / "record", model, len(val_docs))
        result = {"record_dir": str(a.record_dir), "docs_val": len(val_docs), "docs_train": len(train_docs),
                  "text": compare_text(lossless, val_docs, train_docs),
                  "kit_tokenizer": compare_streams({
                      "val tokens": (read_concat(folder, "val"), read_concat(rec, "val")),
                      "train tokens": (read_concat(folder, "train"), read_concat(rec, "train")),
                      "val byte sidecar": (read_concat(folder, "val_bytes"), read_concat(rec, "val_bytes"))})}
        result["original_val_utf8_bytes"] = sum(len(d.encode("utf-8")) for d in val_docs)
        shipped = sorted((a.record_dir / "tokenizers").glob("*.model"))
        if shipped:
            result["record_tokenizer"] = compare_shipped(prep, shipped[0], val_docs, work)
        result["seconds"] = round(time.time() - t0, 1)
    finally:
        if a.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return report(result, a.json)


def compare_shipped(prep, model: Path, val_docs: list[str], work: Path) -> dict:
    """The record's shipped tokenizer: the kit's sidecar code against the record's script on the val documents."""
    import sentencepiece as spm

    from data.documents import encode_split_caseops

    docs_jsonl = work / "val_docs.jsonl"
    with open(docs_jsonl, "w", encoding="utf-8") as f:
        for d in val_docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    rec = run_record_prep(prep, docs_jsonl, work / "record_shipped", model, len(val_docs))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tokens, side = encode_split_caseops(sp, val_docs, "val", 1, int(sp.bos_id()))
    out = compare_streams({"val tokens": (tokens, read_concat(rec, "val")),
                           "val byte sidecar": (side, read_concat(rec, "val_bytes"))})
    out["model"] = model.name
    return out


def report(r: dict, json_path) -> int:
    t = r["text"]
    print(f"documents: {r['docs_val']} val + {r['docs_train']} train (record folder {r['record_dir']})")
    print(f"transform: {t['transform_equal']}/{t['docs']} identical; record's decoder inverts the kit's output on "
          f"{t['record_inverts_kit']}/{t['docs']}; the kit's decoder inverts the record's on {t['kit_inverts_record']}"
          f"/{t['docs']}" + (f"; first differing document starts {t['first_diff']!r}" if t["first_diff"] else ""))
    ok = t["transform_equal"] == t["record_inverts_kit"] == t["kit_inverts_record"] == t["docs"]
    for label in ("kit_tokenizer", "record_tokenizer"):
        for name, s in r.get(label, {}).items():
            if not isinstance(s, dict):
                continue
            ok &= s["identical"]
            print(f"{label} ({r[label].get('model', 'kit-trained')}) {name}: kit {s['kit']:,} vs record "
                  f"{s['record']:,} entries, sums {s['sum_kit']:,} vs {s['sum_record']:,}: "
                  + ("identical" if s["identical"] else f"DIFFERENT ({s['difference']})"))
    print(f"original UTF-8 bytes of the val documents: {r['original_val_utf8_bytes']:,}; {r['seconds']} s")
    print("EQUIVALENT" if ok else "DIFFERENT")
    if json_path:
        write_json(json_path, r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
