"""Print the README's table of every train_gpt.py environment variable (`--write` updates README.md in place)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt  # noqa: E402

START, END = "<!-- flags:start -->", "<!-- flags:end -->"


def cell(text: str) -> str:
    return str(text).replace("|", chr(92) + "|")


def table() -> str:
    """One row per declared setting: name (and aliases), type, default, allowed values, architecture, meaning."""
    rows = ["| variable | type | default | allowed | arch | meaning |", "|---|---|---|---|---|---|"]
    for s in train_gpt.SETTINGS:
        names = ", ".join(f"`{n}`" for n in [s.name] + [a if isinstance(a, str) else a[0] for a in s.aliases])
        rows.append(f"| {names} | {s.type.__name__} | `{s.default}` | {cell(s.allowed())} | "
                    f"{'yes' if s.arch else ''} | {cell(s.meaning)} |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    head, rest = text.split(START, 1)
    return head + START + "\n" + table() + END + rest.split(END, 1)[1]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        path = ROOT / "README.md"
        path.write_text(readme_with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table(), end="")
