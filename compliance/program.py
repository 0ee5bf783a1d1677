"""The shared static analysis the rules stand on, assembled: the index (index.py), call resolution (calls.py), the
taint of validation data, targets, hashes and losses (taint.py) and the events lifted to call sites (events.py).

Labels are bit flags in one int (labels.py lists them): where data comes from (VAL, TRAIN), what it is (TGT
targets, CTX inputs, LOSS per-token losses, MULTI stacked scores, TKEY a count read at the gold token, HASH a lossy
hash mixing a target into a key, BYTESRC a byte sidecar, TIME a clock), and what an object is (WEIGHT parameters,
GRAD gradients, GRADFN gradient transforms, OPTIM optimisers, GRADVAR requires-grad tensors, LOADER data loaders).
Function results are summarised in terms of their parameters (one bit per parameter), so a call site gets exactly
the labels of the arguments that flow through; parameters are resolved to call-site labels on demand.
"""

from __future__ import annotations

from collections import defaultdict

from .calls import CallResolver
from .events import EventLifter
from .index import ProgramIndex
from .source import SourceUnit
from .taint import TaintAnalysis


class Program(EventLifter, TaintAnalysis, CallResolver, ProgramIndex):
    def __init__(self, units: list[SourceUnit]):
        ProgramIndex.__init__(self, units)
        self.attr_labels: dict[str, int] = defaultdict(int)
        self.resolve_all()
        self._analyse_labels()
        self._events()
        self._lift()
