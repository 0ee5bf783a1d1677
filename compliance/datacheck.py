"""Data provenance (--data DIR): sha256 of every train and val shard; no train shard may equal a val shard."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .report import ACTIVE, Finding
from .rulings import RULINGS


def shard_hashes(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    train, val = {}, {}
    for p in sorted(folder.rglob("*.bin")):
        name = p.name.lower()
        kind = "val" if ("_val_" in name or name.startswith("val")) else "train" if (
            "_train_" in name or name.startswith("train")) else None
        if kind is None:
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        (val if kind == "val" else train)[str(p.relative_to(folder))] = h.hexdigest()
    return train, val


def check_data(folder: Path, limits: dict, warnings: list[str]) -> list[Finding]:
    train, val = shard_hashes(folder)
    limits["data"] = {"folder": str(folder), "train_shards": len(train), "val_shards": len(val)}
    if not train and not val:
        warnings.append(f"--data {folder}: no fineweb_train_*/fineweb_val_* shards found")
        return []
    by_hash = {}
    for name, h in val.items():
        by_hash.setdefault(h, []).append(name)
    out = []
    for name, h in train.items():
        if h in by_hash:
            out.append(Finding("VAL-TRAIN", ACTIVE, name, 0, f"sha256 {h}\nequals {', '.join(by_hash[h])}",
                               f"Training shard {name} is byte-identical to validation shard "
                               f"{by_hash[h][0]}: the model trains on validation data.", RULINGS["VAL-TRAIN"]))
    return out
