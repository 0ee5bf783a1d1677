"""Records, while an entry runs, every per-token score it computes on the validation stream.

A score is read where the entry turns logits into a log-probability of a target: ``F.cross_entropy``,
``F.nll_loss``, and ``gather`` / ``take_along_dim`` / ``[rows, targets]`` indexing of a ``log_softmax`` or
``softmax`` result. Each such call's targets are located in the validation stream (unique 6-grams of the random
stream, extended while they keep matching), so every recorded value carries the position of the token it scores,
whatever the batching, windowing or document packing of the entry. Targets that are not validation tokens (training
batches) are dropped. A call whose result is later back-propagated is training (its values are not scores), unless
its per-token result was read for something else first (detached, or used with gradients off: one forward that is
scored, then trained on); the others are scores, in the order the entry computed them.
"""

from __future__ import annotations

import weakref

import numpy as np

GRAM = 6


class StreamIndex:
    """Locates runs of target ids in the validation stream."""

    def __init__(self, stream: np.ndarray):
        self.s = np.asarray(stream, dtype=np.int64)
        n = len(self.s)
        self.first: dict[bytes, int] = {}
        dup = set()
        if n >= GRAM:
            win = np.lib.stride_tricks.sliding_window_view(self.s, GRAM)
            for p, key in enumerate(map(bytes, win.astype("<i8"))):
                if key in self.first:
                    dup.add(key)
                else:
                    self.first[key] = p
        for key in dup:
            del self.first[key]

    def _lookup(self, t: np.ndarray, j: int) -> int:
        if len(t) - j < GRAM:
            return -1
        return self.first.get(t[j:j + GRAM].astype("<i8").tobytes(), -1)

    def locate(self, targets: np.ndarray) -> np.ndarray:
        """Stream position of each target (-1 where it cannot be placed)."""
        t = np.asarray(targets, dtype=np.int64).reshape(-1)
        pos = np.full(len(t), -1, dtype=np.int64)
        s, n, j = self.s, len(self.s), 0
        while j < len(t):
            p = self._lookup(t, j)
            if p < 0:
                j += 1
                continue
            m = min(len(t) - j, n - p)
            same = t[j:j + m] == s[p:p + m]
            k = int(m if same.all() else np.argmin(same))
            for r in range(1, min(3, k - GRAM) + 1):   # a segment that ran one or two ids into the next window
                q = self._lookup(t, j + k - r)
                if q >= 0 and q != p + k - r:
                    k -= r
                    break
            pos[j:j + k] = np.arange(p, p + k)
            j += k
        return pos


class Recorder:
    """A hook for the shim's torch-function mode. ``start(stream, watch)`` before each run, ``finish()`` after."""

    def __init__(self):
        import torch
        import torch.nn.functional as F

        self.torch = torch
        self.ce = {F.cross_entropy}
        self.nll = {F.nll_loss}
        self.logp = {F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax, torch.special.log_softmax}
        self.prob = {F.softmax, torch.softmax, torch.Tensor.softmax, torch.special.softmax}
        self.pick = {torch.gather, torch.Tensor.gather, torch.take_along_dim, torch.Tensor.take_along_dim,
                     torch.Tensor.__getitem__}
        self.watch_all = self.ce | self.nll | self.logp | self.prob | self.pick
        T = torch.Tensor
        self.shape_ops = {T.reshape, T.view, T.squeeze, T.unsqueeze, T.flatten, T.float, T.double, T.to, T.contiguous,
                          T.__getitem__, torch.reshape, torch.flatten, torch.squeeze, T.view_as, T.reshape_as}
        self.index: StreamIndex | None = None
        self.events: list[dict] = []
        self.watch: set[int] = set()
        self.live: dict[int, tuple] = {}   # id(per-token result that requires grad) -> (weakref, event)

    def start(self, stream, watch=()) -> None:
        self.index = StreamIndex(np.asarray(stream))
        self.events = []
        self.live = {}
        self.watch = set(int(w) for w in watch)

    # -- the hook ---------------------------------------------------------------------------------------------
    def __call__(self, func, args, kwargs, out) -> None:
        if self.live:
            self._read(func, args, out)
        if func not in self.watch_all or self.index is None:
            return
        torch = self.torch
        try:
            if func in self.logp or func in self.prob:
                if isinstance(out, torch.Tensor) and _last_dim(args, kwargs, out):
                    out._pg_kind = "logp" if func in self.logp else "prob"
                return
            if func in self.ce:
                self._ce(args, kwargs, out, log_probs=False)
            elif func in self.nll:
                self._ce(args, kwargs, out, log_probs=True)
            else:
                self._pick(func, args, kwargs, out)
        except Exception:  # noqa: BLE001 - recording never changes what the entry computes
            return

    def _read(self, func, args, out) -> None:
        """A per-token result that requires grad (or a reshaped view of it), read with gradients off or detached
        before any backward through it: its values were used as scores."""
        torch = self.torch
        a = args[0] if args else None
        hit = self.live.get(id(a)) if isinstance(a, torch.Tensor) else None
        if hit is None or hit[0]() is not a or hit[1]["trained"]:
            return
        if not torch.is_grad_enabled() or func is torch.Tensor.detach:
            hit[1]["read"] = True
        elif func in self.shape_ops and isinstance(out, torch.Tensor) and out.requires_grad:
            self.live[id(out)] = (weakref.ref(out), hit[1])

    def _ce(self, args, kwargs, out, log_probs: bool) -> None:
        torch = self.torch
        x = args[0] if args else kwargs.get("input")
        y = args[1] if len(args) > 1 else kwargs.get("target")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or y.dtype.is_floating_point:
            return
        if x.dim() >= 3:
            x = x.movedim(1, -1)
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        logp = rows if log_probs else torch.log_softmax(rows, dim=-1)
        self._add(y.detach().reshape(-1), logp, None, out)

    def _pick(self, func, args, kwargs, out) -> None:
        torch = self.torch
        src = args[0] if args else kwargs.get("input")
        kind = getattr(src, "_pg_kind", None)
        if kind is None or not isinstance(out, torch.Tensor):
            return
        if func is torch.Tensor.__getitem__:
            key = args[1]
            if not (isinstance(key, tuple) and len(key) == 2 and src.dim() == 2
                    and all(isinstance(k, torch.Tensor) and not k.dtype.is_floating_point for k in key)):
                return
            rows_idx, idx = key
            rows = src.detach()[rows_idx.reshape(-1)].double()
        else:
            idx = args[2] if len(args) > 2 else kwargs.get("index", kwargs.get("indices"))
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if not isinstance(idx, torch.Tensor) or dim not in (-1, src.dim() - 1) or idx.shape[-1] != 1:
                return
            rows = src.detach().reshape(-1, src.shape[-1]).double()
        logp = rows if kind == "logp" else torch.log(rows)
        self._add(idx.detach().reshape(-1), logp, None, out)

    def _add(self, targets, logp_rows, _unused, out) -> None:
        torch = self.torch
        t = targets.to("cpu").numpy().astype(np.int64)
        if len(t) != logp_rows.shape[0]:
            return
        pos = self.index.locate(t)
        keep = pos >= 0
        if not keep.any():
            return
        sel = torch.from_numpy(np.nonzero(keep)[0])
        tt = torch.from_numpy(t[keep])
        vals = -logp_rows[sel].gather(1, tt[:, None]).squeeze(1)
        ev = {"pos": pos[keep], "val": vals.numpy().copy(), "trained": False, "read": False, "rows": {}}
        for i in np.nonzero(np.isin(pos, list(self.watch)))[0] if self.watch else []:
            ev["rows"][int(pos[i])] = logp_rows[int(i)].numpy().copy()
        self.events.append(ev)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(lambda g, ev=ev: ev.__setitem__("trained", True))
            if out.numel() == len(t):
                self.live[id(out)] = (weakref.ref(out), ev)

    # -- the result ---------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Scores in computation order: {"pos", "val", "call" (index of the recorded call of each score), "rows":
        {pos: [log-probs per computation]}, "score_calls", "trained_calls"}."""
        pos, val, call, rows, trained = [], [], [], {}, 0
        for ev in self.events:
            if ev["trained"]:
                trained += 1
                if not ev["read"]:
                    continue
            call.append(np.full(len(ev["pos"]), len(pos), dtype=np.int64))
            pos.append(ev["pos"])
            val.append(ev["val"])
            for p, r in ev["rows"].items():
                rows.setdefault(str(p), []).append(r.tolist())
        self.events = []
        self.live = {}
        cat = (lambda xs: np.concatenate(xs).tolist() if xs else [])
        return {"pos": cat(pos), "val": cat(val), "call": cat(call), "rows": rows, "score_calls": len(pos),
                "trained_calls": trained}


def _last_dim(args, kwargs, out) -> bool:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return dim is None or dim == -1 or dim == out.dim() - 1
