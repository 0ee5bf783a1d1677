"""Findings, the verdict, and the two renderings (plain text for people, one JSON object for tools).

Verdict (and exit status): ``flagged`` (1) when any finding is active; else ``incomplete`` (3) when some of the
entry's code could not be analysed (``incomplete`` names what: unreadable syntax, a wrapper that could not be
decoded, a rule that failed, the time budget); else ``needs-ruling`` (1) when a finding belongs to an open class;
else ``clean`` (0). The audit fails closed: it never says ``clean`` about code it did not analyse."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .rulings import RULINGS

ACTIVE, DORMANT, NEEDS_RULING, WARNING = "active", "dormant", "needs-ruling", "warning"   # warning: STATS only
EXIT = {"clean": 0, "flagged": 1, "needs-ruling": 1, "incomplete": 3}


@dataclass
class Finding:
    rule: str
    status: str                  # active | dormant | needs-ruling
    file: str
    line: int
    evidence: str
    explanation: str
    ruling: str = ""
    flag: str | None = None      # "NAME=value" that activates a dormant finding
    runs: list[str] = field(default_factory=list)   # logged runs in which it is active
    decoded: str = ""            # wrapper chain when the code came out of a self-extracting wrapper

    def __post_init__(self):
        if not self.ruling:
            self.ruling = RULINGS.get(self.rule, "")

    def as_dict(self) -> dict:
        d = {"rule": self.rule, "status": self.status, "file": self.file, "line": self.line,
             "evidence": self.evidence, "explanation": self.explanation, "ruling": self.ruling}
        if self.flag:
            d["flag"] = self.flag
        if self.runs:
            d["runs"] = list(self.runs)
        if self.decoded:
            d["decoded"] = self.decoded
        return d


@dataclass
class Report:
    path: str
    findings: list[Finding] = field(default_factory=list)
    limits: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)   # what could not be analysed (fail closed)

    @property
    def verdict(self) -> str:
        if any(f.status == ACTIVE for f in self.findings):
            return "flagged"
        if self.incomplete:
            return "incomplete"
        if any(f.status == NEEDS_RULING for f in self.findings):
            return "needs-ruling"
        return "clean"

    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def sorted_findings(self) -> list[Finding]:
        order = {ACTIVE: 0, NEEDS_RULING: 1, DORMANT: 2, WARNING: 3}
        return sorted(self.findings, key=lambda f: (order.get(f.status, 3), f.file, f.line, f.rule))

    def as_dict(self) -> dict:
        return {"path": self.path, "verdict": self.verdict,
                "findings": [f.as_dict() for f in self.sorted_findings()],
                "limits": self.limits, "warnings": list(self.warnings) + list(self.notes),
                "files": self.files, "incomplete": list(self.incomplete)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, default=str)

    def to_text(self) -> str:
        out = [f"compliance audit: {self.path}", f"verdict: {self.verdict.upper()}"]
        if self.files:
            out.append("audited: " + ", ".join(self.files))
        if self.incomplete:
            out.append("not analysed (the verdict cannot be clean):")
            out.extend(f"  - {x}" for x in self.incomplete)
        fs = self.sorted_findings()
        if not fs:
            out.append("findings: none")
        for f in fs:
            where = f"{f.file}:{f.line}" + (f" (decoded {f.decoded})" if f.decoded else "")
            head = f"[{f.rule}] {f.status}"
            if f.flag:
                head += f" (activated by {f.flag})"
            if f.runs:
                head += f" (on in runs: {', '.join(f.runs)})"
            out.append("")
            out.append(f"{head}  {where}")
            out.append(f"  {f.explanation}")
            for ln in f.evidence.splitlines():
                out.append(f"    | {ln}")
            out.append(f"  ruling: {f.ruling}")
        if self.limits:
            out.append("")
            out.append("limits:")
            for k, v in self.limits.items():
                out.append(f"  {k}: {_short(v)}")
        ws = list(self.warnings) + list(self.notes)
        if ws:
            out.append("")
            out.append("warnings:")
            for w in ws:
                out.append(f"  - {w}")
        return "\n".join(out)


def _short(v) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) < 400 else s[:397] + "..."
