"""The rule registry: one place where every check is registered with its rule id, the ruling it rests on, the context
it reads and its fixtures (like a linter's rule table).

A rule id (``TTT-PRE``, ``LIMITS``, ...) names a class of violation from COMPLIANCE.md; one id may have several
checks over different contexts (LIMITS: network calls in the code, and the time/size limits in the logs).

- scope ``program``: the static analysis of the code (``base.Context``);
- scope ``logs``: what the run logs and ``submission.json`` say (``base.LogContext``);
- scope ``data``: the shards given with ``--data`` (``base.DataContext``).

``fixtures`` names the fixture folders (under tests/fixtures/compliance/) that exercise the check: script fixtures
carry ``# expect: RULE status`` / ``# expect: clean`` headers, folder fixtures an ``expect.json``. A test asserts
that every rule id has at least one violating and one legal fixture and a row in compliance/README.md.
"""

from __future__ import annotations

from ..rulings import RULINGS, TITLES

SCOPES = ("program", "logs", "data")
REGISTRY: list = []


def register(cls):
    """Class decorator: instantiate the check and add it to the registry (report order = registration order)."""
    inst = cls()
    if inst.id not in RULINGS:
        raise ValueError(f"rule {inst.id!r} has no ruling in rulings.py")
    if inst.scope not in SCOPES:
        raise ValueError(f"rule {inst.id!r}: unknown scope {inst.scope!r}")
    if not inst.fixtures:
        raise ValueError(f"rule {inst.id!r} ({cls.__name__}) registers no fixtures")
    REGISTRY.append(inst)
    return cls


def rule_ids() -> list[str]:
    return list(dict.fromkeys(r.id for r in REGISTRY))


def checks(scope: str | None = None) -> list:
    return [r for r in REGISTRY if scope is None or r.scope == scope]


def title(rule_id: str) -> str:
    return TITLES.get(rule_id, "")
