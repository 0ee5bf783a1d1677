"""Print the README's table of every train_gpt.py environment variable (`--write` updates README.md in place)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt  # noqa: E402

START, END = "<!-- flags:start -->", "<!-- flags:end -->"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, _, default, meaning in train_gpt.FLAGS:
        rows.append(f"| `{name}` | `{default}` | {meaning.replace('|', chr(92) + '|')} |")
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
