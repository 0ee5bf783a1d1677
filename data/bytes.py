"""Byte accounting for bits-per-byte, computed from the tokenizer alone.

The rule (the challenge's, applied per token ``t`` with previous token ``p``):

* control, unknown and unused ids count 0 bytes and are *boundary* tokens (BOS is one);
* byte-fallback pieces ``<0xNN>`` count exactly 1 byte;
* any other piece counts the UTF-8 length of the piece without its leading ``▁``, plus 1 for
  that ``▁`` only if ``p`` is not a boundary token (the first token of a stream is treated as
  following a boundary).

The ``▁`` is counted in exactly one place (``token_bytes``), never in the table's base counts,
and byte pieces are never measured by their 6-character text: the two public bug classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPACE = "\u2581"  # '▁', SentencePiece's whitespace marker


@dataclass(frozen=True)
class ByteTable:
    """Per-token-id tables: ``base_bytes`` (without the leading ``▁``), ``has_space``, ``is_boundary``."""

    base_bytes: np.ndarray  # int64 [V]
    has_space: np.ndarray  # bool [V]
    is_boundary: np.ndarray  # bool [V]

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.shape[0])


def byte_table_from_sentencepiece(sp) -> ByteTable:
    """Build the table from a loaded ``sentencepiece.SentencePieceProcessor``."""
    vocab = int(sp.get_piece_size())
    base = np.zeros(vocab, dtype=np.int64)
    space = np.zeros(vocab, dtype=bool)
    boundary = np.zeros(vocab, dtype=bool)
    for i in range(vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            boundary[i] = True
            continue
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTable(base, space, boundary)


def byte_table_from_pure_byte_json(spec: dict) -> ByteTable:
    """Table for the upstream pure-byte tokenizer JSON (``byte260``): each byte id is 1 byte."""
    if spec.get("tokenizer_type") != "pure_byte":
        raise ValueError(f"unsupported tokenizer_type {spec.get('tokenizer_type')!r} (expected 'pure_byte')")
    cfg = spec.get("config", {})
    offset = int(cfg.get("byte_offset", 4))
    count = int(cfg.get("byte_count", 256))
    vocab = int(spec.get("vocab_size", offset + count))
    base = np.zeros(vocab, dtype=np.int64)
    boundary = np.ones(vocab, dtype=bool)
    base[offset : offset + count] = 1
    boundary[offset : offset + count] = False
    return ByteTable(base, np.zeros(vocab, dtype=bool), boundary)


def load_byte_table(path: str | os.PathLike) -> ByteTable:
    """Byte table for a tokenizer file: a SentencePiece ``.model`` or a pure-byte ``.json``."""
    path = Path(path)
    if path.suffix == ".json":
        return byte_table_from_pure_byte_json(json.loads(path.read_text(encoding="utf-8")))
    import sentencepiece as spm

    return byte_table_from_sentencepiece(spm.SentencePieceProcessor(model_file=str(path)))


def token_bytes(tokens, table: ByteTable, prev_token: int | None = None) -> np.ndarray:
    """Bytes of each token of ``tokens`` (int64 array). ``prev_token`` is the token before the
    first one, if any (``None``: the stream starts after a boundary)."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    if t.min() < 0 or t.max() >= table.vocab_size:
        raise ValueError(f"token id outside [0, {table.vocab_size}) in stream")
    out = table.base_bytes[t].copy()
    prev_boundary = np.empty(t.size, dtype=bool)
    prev_boundary[0] = True if prev_token is None else bool(table.is_boundary[int(prev_token)])
    prev_boundary[1:] = table.is_boundary[t[:-1]]
    out += (table.has_space[t] & ~prev_boundary).astype(np.int64)
    return out


def count_bytes(tokens, table: ByteTable, prev_token: int | None = None) -> int:
    """Total bytes of a token stream by the rule above."""
    return int(token_bytes(tokens, table, prev_token).sum())
