"""SentencePiece BPE training with the official challenge settings."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from data.errors import UserError
from data.sources import trainer_pieces
from kitlib.fileio import write_atomic

# The trainer settings of the official tokenizers (vocab_size is added per build).
OFFICIAL_TRAINER_SETTINGS = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# SentencePiece's default: longer trainer inputs (in UTF-8 bytes, before normalisation) are skipped.
MAX_SENTENCE_LENGTH = 4192
BOS_ID = OFFICIAL_TRAINER_SETTINGS["bos_id"]


@dataclass(frozen=True)
class TrainedTokenizer:
    model: bytes  # the .model file as written
    vocab: bytes  # the .vocab file as written
    stats: dict  # trainer input: pieces fed, documents split, max_sentence_length

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    @property
    def vocab_sha256(self) -> str:
        return hashlib.sha256(self.vocab).hexdigest()


class _PieceCounter:
    """Iterator over trainer pieces of the documents that counts what it fed."""

    def __init__(self, docs: Iterable[str], max_bytes: int):
        self.docs = docs
        self.max_bytes = max_bytes
        self.pieces = 0
        self.docs_split = 0

    def __iter__(self):
        for doc in self.docs:
            n = 0
            for piece in trainer_pieces(doc, self.max_bytes):
                n += 1
                yield piece
            self.pieces += n
            if n > 1:
                self.docs_split += 1


def vocab_text(sp) -> str:
    """The ``.vocab`` file SentencePiece writes: ``piece<TAB>score`` per id (C++ default float format)."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


def train_tokenizer(
    train_docs: Iterable[str],
    model_path: str | os.PathLike,
    vocab_size: int,
    threads: int = 2,
    max_sentence_length: int = MAX_SENTENCE_LENGTH,
    seed: int = 0,
    verbose: bool = False,
    user_defined_symbols: tuple[str, ...] = (),
) -> "TrainedTokenizer":
    """Train a BPE model on ``train_docs`` with the official settings and write ``<stem>.model``
    and ``<stem>.vocab`` (each under a temporary name, then renamed into place).

    Documents are fed through ``sentence_iterator``; those longer than ``max_sentence_length``
    bytes are split at whitespace instead of being silently dropped by the trainer. The model is
    trained into memory (``model_writer``), so the file holds no temporary path and two builds
    give byte-identical files. The result depends on ``threads`` (SentencePiece's BPE trainer
    gives different merges for different thread counts) but is reproducible for a fixed count.
    ``user_defined_symbols`` become pieces of their own right after the four special ids (CaseOps reserves its
    operators as ids 4-7 this way). Returns the bytes written (use them, not the files, which another process
    could replace) and the trainer-input stats.
    """
    import io

    import sentencepiece as spm

    model_path = Path(model_path)
    vocab_path = model_path.with_suffix(".vocab")
    counter = _PieceCounter(train_docs, max_sentence_length)
    buf = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(counter),
            model_writer=buf,
            vocab_size=int(vocab_size),
            num_threads=int(threads),
            max_sentence_length=int(max_sentence_length),
            minloglevel=0 if verbose else 2,
            **OFFICIAL_TRAINER_SETTINGS,
            **({"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}),
        )
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())
        raise UserError(f"SentencePiece training failed (vocab size {vocab_size}): {msg}") from None
    model = buf.getvalue()
    if counter.pieces == 0 or not model:
        raise UserError("SentencePiece training got no input text")
    sp = spm.SentencePieceProcessor(model_proto=model)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    vocab = vocab_text(sp).encode("utf-8")
    write_atomic(vocab_path, vocab)
    write_atomic(model_path, model)
    stats = {"pieces": counter.pieces, "docs_split": counter.docs_split, "max_sentence_length": int(max_sentence_length)}
    return TrainedTokenizer(model, vocab, stats)
