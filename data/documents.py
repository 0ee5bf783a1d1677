"""Build a tokenizer and token shards from documents: the embedded Wikipedia leads, a JSONL file or a folder of
.txt files, optionally through the CaseOps transform (with the val byte sidecar).

Outputs under the data root ``out``: ``datasets/<dataset>/fineweb_{val,train}_NNNNNN.bin`` (+
``fineweb_val_bytes_NNNNNN.bin`` with CaseOps), ``datasets/<dataset>/manifest.json`` (written last) and
``tokenizers/<name>_<V>_bpe[_caseops].model`` / ``.vocab``. The whole build holds the dataset's lock
(``data/lock.py``); every file is written under a temporary name and renamed; the manifest's hashes are of the
bytes this build wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.errors import UserError
from data.manifest import (
    FORMAT,
    PATHS_NOTE,
    display_path,
    existing_shards,
    manifest_up_to_date,
    odd_shard_entries,
    sha256_json,
    shard_name,
    write_json_atomic,
)

PREP_VERSION = 1
ENCODE_BATCH_DOCS = 512


@dataclass
class Source:
    kind: str  # wiki | jsonl | txt_dir
    description: str
    path: Path
    name: str  # default dataset name prefix
    load: Callable[[], list[str]]


@dataclass
class Layout:
    out: Path
    dataset: str
    folder: Path
    model_path: Path
    vocab_path: Path

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"


def default_name(path: Path) -> str:
    import re

    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return name or "corpus"


def resolve_source(args: argparse.Namespace) -> Source:
    """The documents to read (nothing is read yet); a missing input is a ``UserError``."""
    from data import sources

    if args.source == "wiki":
        in_path = sources.wiki_summaries_path()
        try:
            import importlib.metadata as md

            pkg_version = md.version(sources.WIKI_DIST)
        except Exception:
            pkg_version = "unknown"
        description = (f"embedded English Wikipedia lead sections: {sources.WIKI_DIST}=={pkg_version} "
                       f"{sources.WIKI_PACKAGE}/{sources.WIKI_FILE} (field 'extract', titles sorted)")
        return Source("wiki", description, in_path, "wiki", lambda: sources.load_wiki(in_path))
    in_path = Path(args.input)
    if not in_path.exists():
        raise UserError(f"input not found: {in_path}")
    if in_path.is_dir():
        return Source("txt_dir", f"folder of .txt files (one document per file, sorted names): {in_path.resolve()}",
                      in_path, default_name(in_path), lambda: sources.load_txt_dir(in_path))
    if in_path.is_file():
        return Source("jsonl", f"JSONL file, field {args.text_field!r}: {in_path.resolve()}", in_path,
                      default_name(in_path), lambda: sources.load_jsonl(in_path, args.text_field))
    raise UserError(f"input is neither a file nor a folder: {in_path}")


def layout_for(args: argparse.Namespace, name: str) -> Layout:
    vocab = int(args.vocab_size)
    suffix = "_caseops" if args.caseops else ""
    out = Path(args.out_dir)
    model_path = out / "tokenizers" / f"{name}_{vocab}_bpe{suffix}.model"
    dataset = f"{name}_sp{vocab}{suffix}"
    return Layout(out, dataset, out / "datasets" / dataset, model_path, model_path.with_suffix(".vocab"))


# ------------------------------------------------------------------------- encoding


def _batches(docs: list[str], split: str):
    from tqdm import tqdm

    with tqdm(total=len(docs), desc=f"tokenize {split}", unit="doc", disable=None, leave=False) as bar:
        for start in range(0, len(docs), ENCODE_BATCH_DOCS):
            batch = docs[start : start + ENCODE_BATCH_DOCS]
            yield batch
            bar.update(len(batch))


def _to_uint16(parts: list[np.ndarray], what: str) -> np.ndarray:
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() > 0xFFFF):
        raise UserError(f"{what} outside the uint16 range")
    return stream.astype(np.uint16)


def encode_split(sp, docs: list[str], split: str, threads: int, bos_id: int) -> np.ndarray:
    """Tokenise ``docs`` as BOS + ids each (no EOS); return the uint16 stream."""
    parts: list[np.ndarray] = []
    for batch in _batches(docs, split):
        for ids in sp.encode(batch, out_type=int, num_threads=threads):
            arr = np.empty(len(ids) + 1, dtype=np.int64)
            arr[0] = bos_id
            arr[1:] = ids
            parts.append(arr)
    return _to_uint16(parts, f"token ids of the {split} split")


def encode_split_caseops(sp, docs: list[str], split: str, threads: int, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise the CaseOps transform of ``docs`` (BOS + ids each) and give every token the bytes of the original
    text it stands for (BOS 0, operators 0): the uint16 token stream and the aligned uint16 byte stream."""
    from data import caseops

    ids_parts: list[np.ndarray] = []
    bytes_parts: list[np.ndarray] = []
    for batch in _batches(docs, split):
        transformed = [caseops.encode(d).encode("utf-8") for d in batch]
        encoded = sp.encode([t.decode("utf-8") for t in transformed], out_type="offset_mapping", return_bytes=True,
                            num_threads=threads)
        for text, enc in zip(transformed, encoded):
            ids = np.empty(len(enc["ids"]) + 1, dtype=np.int64)
            ids[0] = bos_id
            ids[1:] = enc["ids"]
            per = np.zeros(ids.size, dtype=np.int64)
            if enc["ids"]:
                per[1:] = caseops.token_original_bytes(text, enc["offsets"])
            ids_parts.append(ids)
            bytes_parts.append(per)
    stream = _to_uint16(ids_parts, f"token ids of the {split} split")
    return stream, _to_uint16(bytes_parts, f"a token of the {split} split stands for a byte count")


# ------------------------------------------------------------------------- writing


def write_split(folder: Path, split: str, stream: np.ndarray, max_tokens: int, bar) -> dict[str, tuple[str, int]]:
    """Cut ``stream`` into shards of at most ``max_tokens`` tokens (documents may straddle shards); returns
    ``{name: (sha256 of the bytes written, tokens)}``."""
    from data.shards import encode_shard
    from kitlib.fileio import write_atomic

    written = {}
    n_shards = max(1, -(-stream.size // max_tokens))
    for i in range(n_shards):
        chunk = stream[i * max_tokens : (i + 1) * max_tokens]
        name = shard_name(split, i)
        blob = encode_shard(chunk, folder / name)
        write_atomic(folder / name, blob)
        written[name] = (hashlib.sha256(blob).hexdigest(), int(chunk.size))
        if bar is not None:
            bar.update(chunk.size)
    return written


def _settings(args: argparse.Namespace, source: Source, name: str, max_len: int) -> dict:
    import sentencepiece as spm

    from data.tokenizer import OFFICIAL_TRAINER_SETTINGS

    settings = {
        "source_kind": source.kind,
        "text_field": args.text_field if source.kind == "jsonl" else None,
        "vocab_size": int(args.vocab_size),
        "seed": int(args.seed),
        "val_fraction": args.val_fraction if args.val_docs is None else None,
        "val_docs": args.val_docs,
        "shuffle": not args.no_shuffle,
        "max_shard_tokens": int(args.max_shard_tokens),
        "threads": int(args.threads),
        "max_sentence_length": max_len,
        "trainer": OFFICIAL_TRAINER_SETTINGS,
        "sentencepiece_version": spm.__version__,
        "name": name,
    }
    if args.caseops:  # only then: an existing non-CaseOps build keeps its fingerprint
        from data.caseops import TEXT_TRANSFORM

        settings["text_transform"] = TEXT_TRANSFORM
    return settings


# ------------------------------------------------------------------------- the build


def build_from_documents(args: argparse.Namespace) -> int:
    from data.lock import dataset_lock
    from data.sources import input_sha256
    from data.tokenizer import MAX_SENTENCE_LENGTH

    source = resolve_source(args)
    name = args.name or source.name
    lay = layout_for(args, name)
    max_len = int(args.max_sentence_length or MAX_SENTENCE_LENGTH)
    settings = _settings(args, source, name, max_len)
    fingerprint = {"prep_version": PREP_VERSION, "input_sha256": input_sha256(source.path), "settings": settings}
    with dataset_lock(lay.out, lay.dataset):
        return _build_locked(args, source, lay, settings, fingerprint)


def _refuse_odd_entries(folder: Path) -> None:
    odd = odd_shard_entries(folder)
    if odd:
        raise UserError(f"{odd[0]} is named like a shard but is not a regular file (a folder or a broken link); "
                        "remove it and run again")


def _build_locked(args, source: Source, lay: Layout, settings: dict, fingerprint: dict) -> int:
    import sentencepiece as spm

    from data.lock import clean_interrupted
    from data.sources import clean_text, split_docs
    from data.tokenizer import train_tokenizer

    t0 = time.time()
    inputs_sha = sha256_json(fingerprint)
    _refuse_odd_entries(lay.folder)
    if not args.force and manifest_up_to_date(lay.manifest_path, inputs_sha, lay.out):
        print(f"up to date: {display_path(lay.manifest_path)}")
        return 0
    clean_interrupted(lay.folder, [lay.model_path, lay.vocab_path])
    raw = source.load()
    docs = [d for d in (clean_text(d) for d in raw) if d]
    if not docs:
        raise UserError(f"empty corpus: no non-empty documents in {source.path}")
    val_docs, train_docs = split_docs(docs, args.seed, args.val_fraction, args.val_docs, shuffle=not args.no_shuffle)

    # From here on outputs change: drop the old manifest first, so that an interrupted rebuild never leaves a
    # manifest describing files that were replaced.
    lay.manifest_path.unlink(missing_ok=True)
    t_tok = time.time()
    if args.caseops:
        from data.caseops import OPERATORS, encode

        tok_docs, symbols = (encode(d) for d in train_docs), OPERATORS
    else:
        tok_docs, symbols = train_docs, ()
    trainer = train_tokenizer(tok_docs, lay.model_path, settings["vocab_size"], threads=args.threads,
                              max_sentence_length=settings["max_sentence_length"], seed=args.seed,
                              verbose=args.verbose, user_defined_symbols=symbols)
    t_tok = time.time() - t_tok
    sp = spm.SentencePieceProcessor(model_proto=trainer.model)  # what was trained, not what is on disk later
    counts = _encode_and_write(args, sp, lay, val_docs, train_docs)
    manifest = _manifest(args, source, lay, settings, fingerprint, inputs_sha, sp, trainer, counts,
                         docs_total=len(raw), docs_dropped=len(raw) - len(docs))
    write_json_atomic(lay.manifest_path, manifest)
    secs = time.time() - t0
    bpt = counts["val_bytes"] / max(1, counts["val_tokens"])
    print(
        f"done: {lay.dataset}: {len(train_docs)} train + {len(val_docs)} val docs, "
        f"{counts['train_tokens']:,} train + {counts['val_tokens']:,} val tokens, {bpt:.3f} val bytes/token"
        f"{' (sidecar)' if args.caseops else ''}, tokenizer {display_path(lay.model_path)} "
        f"({sp.get_piece_size()} pieces, {t_tok:.1f} s), {secs:.1f} s -> {display_path(lay.manifest_path)}"
    )
    return 0


def _encode_and_write(args, sp, lay: Layout, val_docs: list[str], train_docs: list[str]) -> dict:
    """Tokenise both splits, write the shards (and the CaseOps sidecar), remove stale shards; the counts and
    hashes for the manifest."""
    from tqdm import tqdm

    from data.bytes import byte_table_from_sentencepiece, count_bytes

    bos_id = int(sp.bos_id())
    sidecar = None
    if args.caseops:
        val_stream, sidecar = encode_split_caseops(sp, val_docs, "val", args.threads, bos_id)
        train_stream, train_orig = encode_split_caseops(sp, train_docs, "train", args.threads, bos_id)
        val_bytes, train_bytes = int(sidecar.sum(dtype=np.int64)), int(train_orig.sum(dtype=np.int64))
    else:
        table = byte_table_from_sentencepiece(sp)
        val_stream = encode_split(sp, val_docs, "val", args.threads, bos_id)
        train_stream = encode_split(sp, train_docs, "train", args.threads, bos_id)
        val_bytes, train_bytes = count_bytes(val_stream, table), count_bytes(train_stream, table)

    lay.folder.mkdir(parents=True, exist_ok=True)
    total = val_stream.size + train_stream.size
    with tqdm(total=total, desc="write shards", unit="tok", unit_scale=True, disable=None, leave=False) as bar:
        written = write_split(lay.folder, "val", val_stream, args.max_shard_tokens, bar)
        side = write_split(lay.folder, "val_bytes", sidecar, args.max_shard_tokens, None) if sidecar is not None \
            else {}
        written.update(side)
        written.update(write_split(lay.folder, "train", train_stream, args.max_shard_tokens, bar))
    for stale in existing_shards(lay.folder):
        if stale.name not in written:
            stale.unlink()
    return {"val_tokens": int(val_stream.size), "train_tokens": int(train_stream.size), "val_bytes": val_bytes,
            "train_bytes": train_bytes, "written": written, "sidecar": side, "docs_val": len(val_docs),
            "docs_train": len(train_docs)}


def _manifest(args, source: Source, lay: Layout, settings, fingerprint, inputs_sha, sp, trainer, counts, *,
              docs_total: int, docs_dropped: int) -> dict:
    from data.tokenizer import OFFICIAL_TRAINER_SETTINGS

    trainer_settings = dict(OFFICIAL_TRAINER_SETTINGS, vocab_size=settings["vocab_size"],
                            num_threads=int(args.threads), max_sentence_length=settings["max_sentence_length"])
    manifest = {
        "format": FORMAT,
        "prep_version": PREP_VERSION,
        "dataset": lay.dataset,
        "source": {"kind": source.kind, "description": source.description, "path": str(source.path.resolve())},
        "seed": int(args.seed),
        "val_fraction": settings["val_fraction"],
        "val_docs_requested": args.val_docs,
        "shuffle": not args.no_shuffle,
        "docs_total": docs_total,
        "docs_dropped_empty": docs_dropped,
        "docs_train": counts["docs_train"],
        "docs_val": counts["docs_val"],
        "train_tokens": counts["train_tokens"],
        "val_tokens": counts["val_tokens"],
        "train_bytes": counts["train_bytes"],
        "val_bytes": counts["val_bytes"],
        "bos_id": int(sp.bos_id()),
        "append_eos": False,
        "max_shard_tokens": int(args.max_shard_tokens),
        "tokenizer": {
            "file": lay.model_path.relative_to(lay.out).as_posix(),
            "vocab_file": lay.vocab_path.relative_to(lay.out).as_posix(),
            "sha256": trainer.model_sha256,
            "vocab_sha256": trainer.vocab_sha256,
            "vocab_size": int(sp.get_piece_size()),
            "requested_vocab_size": settings["vocab_size"],
            "trainer": trainer_settings,
            "trained_on": "train split only",
            "trainer_input": trainer.stats,
            "sentencepiece_version": settings["sentencepiece_version"],
        },
        "shards": {n: d for n, (d, _) in counts["written"].items()},
        "shard_tokens": {n: t for n, (_, t) in counts["written"].items()},
        "inputs_sha256": inputs_sha,
        "inputs": fingerprint,
        "paths_relative_to": PATHS_NOTE,
    }
    if args.caseops:
        from data.caseops import FIRST_OPERATOR_ID, OPERATORS, TEXT_TRANSFORM

        trainer_settings["user_defined_symbols"] = list(OPERATORS)
        manifest["tokenizer"]["text_transform"] = TEXT_TRANSFORM
        manifest["tokenizer"]["reserved_ids"] = {str(FIRST_OPERATOR_ID + i): op for i, op in enumerate(OPERATORS)}
        manifest["text_transform"] = TEXT_TRANSFORM
        manifest["val_bytes_source"] = "sidecar"
        manifest["val_bytes_file"] = sorted(counts["sidecar"])
        manifest["val_bytes_sha256"] = [counts["sidecar"][n][0] for n in sorted(counts["sidecar"])]
        manifest["train_bytes_note"] = "UTF-8 bytes of the original (untransformed) text the train tokens cover"
    return manifest
