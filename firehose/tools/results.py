"""A tool's results files: its Markdown report and its JSON, side by side in the output directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_report(out: Path, name: str, markdown: str, result: dict) -> None:
    """`out/NAME.md` and `out/NAME.json`, then the report and both paths on standard output."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    sys.stdout.write(f"\n{markdown}\n{out / f'{name}.md'}\n{out / f'{name}.json'}\n")
