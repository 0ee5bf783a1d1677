"""A 3,000-line script audits in under 2 seconds."""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compliance.audit import audit  # noqa: E402

BLOCK = '''
class Stage{i}(nn.Module):
    def __init__(self, dim=512, heads=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.use_gate = bool(int(os.environ.get("USE_GATE_{i}", "0")))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.use_gate:
            y = y * torch.sigmoid(self.scale)
        return x + self.proj(y)


def eval_window_{i}(model, val_tokens, seq_len=1024, stride=64):
    total = val_tokens.numel() - 1
    loss_sum = torch.zeros((), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for ws in range(0, total, stride):
            end = min(ws + seq_len, total)
            chunk = val_tokens[ws:end + 1]
            logits = model(chunk[:-1][None])[0]
            nll = F.cross_entropy(logits.float(), chunk[1:], reduction="none")
            s = 0 if ws == 0 else end - ws - stride
            loss_sum += nll[s:].double().sum()
            count += end - ws - s
    return (loss_sum / count).item()


def train_steps_{i}(model, loader, steps, lr=3e-4):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = loader.next_batch(65536, 1024)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step:{{step}} train_loss:{{loss.item():.4f}}")
    return model


def ttt_chunked_{i}(model, val_tokens, chunk=32768, seq_len=1024):
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    loss_sum, count = 0.0, 0
    n_chunks = (val_tokens.numel() - 1) // chunk
    for ci in range(n_chunks):
        part = val_tokens[ci * chunk:(ci + 1) * chunk + 1]
        n = (part.numel() - 1) // seq_len
        x, y = part[: n * seq_len].view(n, seq_len), part[1: n * seq_len + 1].view(n, seq_len)
        with torch.no_grad():
            nll = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none")
        loss_sum += nll.sum().item()
        count += nll.numel()
        if ci < n_chunks - 1:
            opt.zero_grad()
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
            opt.step()
    return loss_sum / count
'''

HEAD = '''import os
import math
import torch
import torch.nn.functional as F
from torch import nn


class Hyperparameters:
    ttt_enabled = bool(int(os.environ.get("TTT_ENABLED", "0")))
    steps = int(os.environ.get("STEPS", 1000))
'''


def make_script(lines: int) -> str:
    parts = [HEAD]
    i = 0
    while sum(p.count("\n") for p in parts) < lines - 20:
        parts.append(BLOCK.format(i=i))
        i += 1
    calls = "\n".join(f"    v{k} = eval_window_{k}(model, val_tokens)" for k in range(i))
    parts.append(f"\n\ndef main():\n    args = Hyperparameters()\n    model = torch.load('m.pt')\n"
                 f"    val_tokens = torch.load('val.pt')\n{calls}\n    if args.ttt_enabled:\n"
                 f"        ttt_chunked_0(model, val_tokens)\n\n\nif __name__ == '__main__':\n    main()\n")
    return "".join(parts)


def test_3000_line_script_under_2_seconds(tmp_path):
    src = make_script(3000)
    assert 2950 <= src.count("\n") <= 3200
    p = tmp_path / "big_train_gpt.py"
    p.write_text(src)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        rep = audit(p)
        times.append(time.perf_counter() - t)
    print(f"\n3,000-line audit: {min(times):.2f} s (best of 2), verdict {rep.verdict}")
    assert rep.verdict == "clean"
    assert min(times) < 2.0
