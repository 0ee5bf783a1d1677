"""Grid files: parsing, validation and expansion into runs.

A grid is a TOML file::

    name = "seed_table"            # optional, defaults to the file's stem
    description = "..."            # optional
    nproc = 1                      # processes per run (torchrun when > 1)
    seeds = [1337, 42, 2025]

    [budget]                       # ITERATIONS and/or MAX_WALLCLOCK_SECONDS (0: no cap)
    ITERATIONS = 150
    MAX_WALLCLOCK_SECONDS = 0      # train_gpt's default cap is 600 s: 0 makes the step count the budget

    [base]                         # environment shared by every run
    NUM_LAYERS = 4

    [configs]                      # named configurations, each a set of env vars
    control = {}
    ga = {GATED_ATTENTION = 1}
    wide = {MATCH_PARAMS_OF = "ga"}   # widen MODEL_DIM to reach ga's parameter count

    [groups]                       # optional; env applied on top of base (e.g. sizes)
    d128 = {MODEL_DIM = 128}

Precedence (later wins): inherited environment < base < budget < group < config;
RUN_ID and SEED are set by the runner.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MATCH_KEY = "MATCH_PARAMS_OF"
BUDGET_KEYS = ("ITERATIONS", "MAX_WALLCLOCK_SECONDS")
RESERVED_KEYS = ("RUN_ID", "SEED")
TOP_KEYS = {"name", "description", "nproc", "seeds", "budget", "base", "configs", "groups"}

_ENV_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GridError(ValueError):
    """A grid file that cannot be used; the message is one line for the user."""


@dataclass
class Grid:
    name: str
    path: Path | None
    seeds: list[int]
    nproc: int
    budget: dict[str, str]
    base: dict[str, str]
    configs: dict[str, dict[str, str]]  # MATCH_PARAMS_OF kept here, stripped from run env
    groups: dict[str, dict[str, str]]  # empty: one implicit group ""
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def group_names(self) -> list[str]:
        return list(self.groups) or [""]

    def match_target(self, config: str) -> str | None:
        return self.configs[config].get(MATCH_KEY)

    def overrides(self, group: str, config: str) -> dict[str, str]:
        """The env this grid sets for (group, config), without MATCH_PARAMS_OF, RUN_ID, SEED."""
        env: dict[str, str] = {}
        env.update(self.base)
        env.update(self.budget)
        if group:
            env.update(self.groups[group])
        env.update({k: v for k, v in self.configs[config].items() if k != MATCH_KEY})
        return env

    def runs(self) -> list["RunSpec"]:
        """Every group x seed x configuration, in that nesting (a seed's configs run together)."""
        out = []
        for g in self.group_names:
            for s in self.seeds:
                for c in self.configs:
                    out.append(RunSpec(group=g, config=c, seed=s, run_id=run_id(self.name, g, c, s),
                                       env=self.overrides(g, c), matched_to=self.match_target(c)))
        return out


@dataclass
class RunSpec:
    group: str
    config: str
    seed: int
    run_id: str
    env: dict[str, str]
    matched_to: str | None = None
    match_target_params: int | None = None
    matched_params: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.config, str(self.seed))


def run_id(name: str, group: str, config: str, seed: int) -> str:
    parts = [name] + ([group] if group else []) + [config, f"s{seed}"]
    return "_".join(parts)


def env_value(v: Any, where: str) -> str:
    """A TOML scalar as an environment string (booleans become 1/0)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    raise GridError(f"{where}: value must be a string, number or boolean, got {type(v).__name__}")


def _env_table(t: Any, where: str, allow_match: bool = False, allow_budget: bool = True) -> dict[str, str]:
    if not isinstance(t, dict):
        raise GridError(f"{where} must be a table of environment variables, e.g. {{NUM_LAYERS = 4}}")
    env = {}
    for k, v in t.items():
        if not _ENV_RE.match(k):
            raise GridError(f"{where}: {k!r} is not an environment variable name (use UPPER_CASE)")
        if k in RESERVED_KEYS:
            raise GridError(f"{where}: {k} is set by the runner for each run; remove it")
        if k == MATCH_KEY and not allow_match:
            raise GridError(f"{where}: {MATCH_KEY} is only allowed in a configuration")
        if k in BUDGET_KEYS and not allow_budget:
            raise GridError(f"{where}: {k} belongs in [budget]")
        env[k] = env_value(v, f"{where}.{k}")
    return env


def _names(t: Any, where: str, **kw) -> dict[str, dict[str, str]]:
    if not isinstance(t, dict):
        raise GridError(f"[{where}] must be a table of named tables, e.g. control = {{}}")
    out = {}
    for name, env in t.items():
        if not _NAME_RE.match(name):
            raise GridError(f"{where}.{name}: names may use letters, digits, '_', '.', '-' only")
        out[name] = _env_table(env, f"{where}.{name}", **kw)
    return out


def parse_grid(data: dict[str, Any], name: str = "grid", path: Path | None = None) -> Grid:
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise GridError(f"unknown top-level key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP_KEYS))}")
    name = data.get("name", name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise GridError(f"name {name!r}: use letters, digits, '_', '.', '-' only")

    seeds = data.get("seeds")
    if seeds is None:
        raise GridError("missing 'seeds', e.g. seeds = [1337, 42, 2025]")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GridError("'seeds' must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise GridError("'seeds' has duplicates")

    nproc = data.get("nproc", 1)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise GridError("'nproc' must be a positive integer")

    if "budget" not in data:
        raise GridError("missing [budget]: set ITERATIONS and/or MAX_WALLCLOCK_SECONDS")
    budget_t = data["budget"]
    if not isinstance(budget_t, dict):
        raise GridError("[budget] must be a table, e.g. budget = {ITERATIONS = 200}")
    bad = set(budget_t) - set(BUDGET_KEYS)
    if bad:
        raise GridError(f"[budget]: unknown key(s) {', '.join(sorted(bad))}; allowed: {', '.join(BUDGET_KEYS)}")
    for k, v in budget_t.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "ITERATIONS" and v <= 0):
            raise GridError(f"[budget].{k} must be a positive number" + (" (0 means no cap)" if k != "ITERATIONS" else ""))
    if not any(v > 0 for v in budget_t.values()):
        raise GridError("[budget] sets no limit: give ITERATIONS and/or a positive MAX_WALLCLOCK_SECONDS")
    budget = {k: env_value(v, f"budget.{k}") for k, v in budget_t.items()}

    base = _env_table(data.get("base", {}), "[base]", allow_budget=False)

    if "configs" not in data:
        raise GridError("missing [configs], e.g. control = {} and ga = {GATED_ATTENTION = 1}")
    configs = _names(data["configs"], "configs", allow_match=True)
    if not configs:
        raise GridError("[configs] is empty")
    for c, env in configs.items():
        tgt = env.get(MATCH_KEY)
        if tgt is None:
            continue
        if tgt not in configs:
            raise GridError(f"configs.{c}: {MATCH_KEY} = {tgt!r} is not a configuration")
        if tgt == c:
            raise GridError(f"configs.{c}: {MATCH_KEY} names itself")
        if MATCH_KEY in configs[tgt]:
            raise GridError(f"configs.{c}: {MATCH_KEY} target {tgt!r} is itself parameter-matched; match to an unmatched configuration")

    groups = _names(data.get("groups", {}), "groups")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise GridError("'description' must be a string")
    return Grid(name=name, path=path, seeds=list(seeds), nproc=nproc, budget=budget, base=base,
                configs=configs, groups=groups, description=desc, raw=data)


def load_grid(path: str | Path) -> Grid:
    p = Path(path)
    if not p.is_file():
        raise GridError(f"grid file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{p}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise GridError(f"{p}: not UTF-8 text") from None
    try:
        return parse_grid(data, name=_sanitize(p.stem), path=p)
    except GridError as e:
        raise GridError(f"{p}: {e}") from None


def _sanitize(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", s)
    return s if s and s[0].isalnum() else "g" + s
