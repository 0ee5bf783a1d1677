"""A short, fully deterministic CPU training trace of the baseline (every technique flag off).

`python tests/baseline_trace.py DATA_PATH > tests/golden/baseline_trace.json` recorded the golden file from the
commit that had no technique flags yet (never regenerate it). test_flags.py checks that the baseline still
reproduces it: exactly where the value is exact (settings, parameter count, state keys), to a stated relative
tolerance for the float losses (float32 sums differ across CPUs and math libraries from the 7th digit on).
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

ENV = {"NUM_LAYERS": "4", "MODEL_DIM": "64", "NUM_HEADS": "4", "NUM_KV_HEADS": "2", "TRAIN_SEQ_LEN": "32",
       "TRAIN_BATCH_TOKENS": "1024", "SEED": "7"}


def trace(data_path: Path, steps: int = 4, env: dict | None = None) -> dict:
    torch.set_num_threads(1)
    args = tg.Hyperparameters.from_env(ENV if env is None else env)
    model = tg.build_model(args)
    optimizers, _ = tg.build_optimizers(model, args)
    loader = tg.TokenLoader(sorted(data_path.glob("fineweb_train_*.bin")), 0, 1, torch.device("cpu"))
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(8):
            x, y = loader.next_batch(args.train_batch_tokens, args.train_seq_len, 8)
            loss = model(x, y)
            (loss / 8).backward()
            total += loss.item()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(total / 8)
    val = torch.from_numpy(tg.load_shard(data_path / "fineweb_val_000000.bin")[:2049].astype(np.int64))
    nll = tg.score_nll(model, val, 32, 16)
    digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in model.state_dict().values()))
    return {"env": ENV, "losses": [repr(x) for x in losses], "val_nll_sum": repr(nll.sum().item()),
            "num_params": sum(p.numel() for p in model.parameters()), "state_keys": list(model.state_dict()),
            "state_sha256": digest.hexdigest()}


if __name__ == "__main__":
    print(json.dumps(trace(Path(sys.argv[1])), indent=1))
