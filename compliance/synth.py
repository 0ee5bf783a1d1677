"""Tiny synthetic data in the layout entries expect, and the tiny configuration they run at.

* A SentencePiece BPE tokenizer trained with the challenge's settings (``data.tokenizer``) on generated text, at
  :data:`VOCAB` pieces, cached between runs under the system's temporary directory.
* Train shards of random ordinary token ids and a validation stream of random ids with a BOS at each document start
  (documents only in the first part of the stream, so the probes' cut points never move a document boundary).
* ``data/datasets/fineweb10B_sp{V}/fineweb_{train,val}_*.bin`` and ``data/tokenizers/fineweb_{V}_bpe.model``, the
  upstream layout, so both ``DATA_PATH``/``TOKENIZER_PATH`` and ``DATA_DIR``-relative entries find them; also
  ``data/fineweb_{train,val}_sp{V}.bin`` (one file per split, as some non-record entries read).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

VOCAB = 1024
SEQ = 64                 # TRAIN_SEQ_LEN / EVAL_SEQ_LEN
VAL_SEQS = 16            # the validation stream holds VAL_SEQS * SEQ + 1 tokens
TRAIN_TOKENS = 2 * 150   # two train shards, shorter than one training batch: a loader that also reads the validation
                         # files (a pattern matching both splits) reaches past the first cut in its first step
DOCS = 4                 # documents (BOS-led) in the first third of the stream; the rest is one document

# Settings of the tiny configuration, by the names upstream and the records read. An entry reads the ones it
# knows; the others are inert. Layer counts and layer-index lists stay at the entry's defaults (lists such as
# VE_LAYERS=9,10 refer to them); widths, lengths, batch sizes, step counts and budgets shrink. MODEL_DIM=256 keeps
# the MLP matrices (256 x 512 and up) and the embedding above the 65,536 elements under which upstream-derived
# quantisers keep a tensor in float, so quantisation and GPTQ calibration run.
TINY = {
    "MODEL_DIM": "256", "NUM_HEADS": "4", "NUM_KV_HEADS": "2",
    "TRAIN_SEQ_LEN": str(SEQ), "EVAL_SEQ_LEN": str(SEQ), "TTT_EVAL_SEQ_LEN": str(SEQ), "SEQ_LEN": str(SEQ),
    "TRAIN_BATCH_TOKENS": str(8 * SEQ), "VAL_BATCH_SIZE": str(16 * SEQ), "VAL_BATCH_TOKENS": str(16 * SEQ),
    "ITERATIONS": "1", "WARMUP_STEPS": "0", "WARMDOWN_ITERS": "1", "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "1",
    "MAX_WALLCLOCK_SECONDS": "0", "EVAL_STRIDE": "16", "EVAL_BATCH_SEQS": "8", "SLIDING_BATCH_SIZE": "8",
    "TTT_CHUNK_TOKENS": "128", "TTT_BATCH_SEQS": "4", "TTT_BATCH_SIZE": "4", "TTT_EPOCHS": "1",
    "GPTQ_CALIBRATION_BATCHES": "2", "GPTQ_CALIB_BATCHES": "2", "GPTQ_CALIB_SAMPLES": "2", "GPTQ_N_CALIB": "2",
    "GLOBAL_TTT_CHUNK_TOKENS": "128", "GLOBAL_TTT_BATCH_SEQS": "2", "PHASED_TTT_PREFIX_DOCS": "2",
    "SEED": "1337", "DEVICE": "cpu", "COMPILE": "0", "RUN_ID": "compliance_run",
}


def _text(rng: np.random.Generator, n_words: int) -> list[str]:
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    p = 1.0 / np.arange(1, 27)
    p /= p.sum()
    lexicon = ["".join(rng.choice(letters, size=int(rng.integers(1, 9)), p=p)) for _ in range(6000)]
    zipf = 1.0 / np.arange(1, len(lexicon) + 1) ** 0.8
    zipf /= zipf.sum()
    words = rng.choice(len(lexicon), size=n_words, p=zipf)
    docs, i = [], 0
    while i < n_words:
        n = int(rng.integers(50, 400))
        body = " ".join(lexicon[w] for w in words[i:i + n])
        docs.append(body.capitalize() + ". " + str(int(rng.integers(0, 10**6))))
        i += n
    return docs


def tokenizer(vocab: int = VOCAB) -> Path:
    """Path of a cached SentencePiece model with about ``vocab`` pieces (built on first use, ~2 s)."""
    from data.tokenizer import train_tokenizer

    key = hashlib.sha1(f"compliance-run-tokenizer-v1-{vocab}".encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"compliance-run-{key}"
    model = cache / f"fineweb_{vocab}_bpe.model"
    if not model.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        train_tokenizer(_text(rng, 120_000), model, vocab, threads=1)
    return model


def ordinary_ids(model: Path) -> tuple[np.ndarray, int, int]:
    """(ids an entry may see inside a document, BOS id, vocabulary size)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(model))
    ids = [i for i in range(sp.get_piece_size())
           if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]
    return np.array(ids, dtype=np.int64), int(sp.bos_id()), int(sp.get_piece_size())


def val_stream(ordinary: np.ndarray, bos: int, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.choice(ordinary, size=n)
    starts = np.linspace(0, n // 3, DOCS, endpoint=False).astype(int)
    s[starts] = bos
    return s.astype(np.int64)


def replace_from(stream: np.ndarray, cut: int, ordinary: np.ndarray, seed: int) -> np.ndarray:
    """Tokens from ``cut`` on replaced by random ordinary ids, each different from the one it replaces."""
    rng = np.random.default_rng(seed)
    out = stream.copy()
    for i in range(cut, len(out)):
        choice = int(rng.choice(ordinary))
        while choice == out[i]:
            choice = int(rng.choice(ordinary))
        out[i] = choice
    return out


def _skip(folder: str, names: list[str]) -> set[str]:
    """What is not copied with an entry: hidden and cache folders, links to folders (a repository's .venv), logs,
    checkpoints and anything over 64 MB."""
    out = set()
    for n in names:
        p = Path(folder) / n
        if n.startswith(".") or n in ("__pycache__", "logs") or (p.is_symlink() and p.is_dir()) \
                or n.endswith((".log", ".pt", ".ptz", ".png")) or (p.is_file() and p.stat().st_size > 64 * 2**20):
            out.add(n)
    return out


def workspace(tmp: Path, entry_dir: Path, vocab: int = VOCAB) -> dict:
    """Lay out the entry, the data and the tokenizer under ``tmp``; returns the paths and stream facts."""
    from data.shards import write_shard

    model = tokenizer(vocab)
    ordinary, bos, size = ordinary_ids(model)
    shutil.copytree(entry_dir, tmp / "entry", symlinks=True, ignore=_skip)
    ds = tmp / "data" / "datasets" / f"fineweb10B_sp{size}"
    tk = tmp / "data" / "tokenizers"
    ds.mkdir(parents=True)
    tk.mkdir(parents=True)
    shutil.copy(model, tk / model.name)
    shutil.copy(model.with_suffix(".vocab"), tk / model.with_suffix(".vocab").name)
    if model.name != f"fineweb_{size}_bpe.model":
        os.link(tk / model.name, tk / f"fineweb_{size}_bpe.model")
    rng = np.random.default_rng(7)
    half = TRAIN_TOKENS // 2
    trains = []
    for i in range(2):
        train = rng.choice(ordinary, size=half)
        train[0] = bos
        trains.append(train)
        write_shard(ds / f"fineweb_train_{i:06d}.bin", train)
    write_shard(tmp / "data" / f"fineweb_train_sp{size}.bin", np.concatenate(trains))  # one-file layout
    n = VAL_SEQS * SEQ + 1
    return {"data_path": ds, "tokenizer": tk / f"fineweb_{size}_bpe.model", "vocab": size, "bos": bos,
            "ordinary": ordinary, "stream": val_stream(ordinary, bos, n),
            "val_paths": [ds / "fineweb_val_000000.bin", tmp / "data" / f"fineweb_val_sp{size}.bin"]}


def tiny_env(ws: dict, tmp: Path, user: dict) -> dict:
    env = dict(TINY)
    env.update({"VOCAB_SIZE": str(ws["vocab"]), "DATA_PATH": str(ws["data_path"]), "DATA_DIR": str(tmp / "data") + "/",
                "TOKENIZER_PATH": str(ws["tokenizer"])})
    env.update(user)
    return env
