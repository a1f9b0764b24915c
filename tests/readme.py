"""The README's commands, as tests run them (test_docs runs each; the tools' own tests run theirs)."""

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table_commands() -> list[str]:
    """The commands of the README's Commands table (its second column)."""
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|[^|]*\| `([^`]+)` \|", section, flags=re.MULTILINE)


def argv(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def readme_tool_command(tool: str) -> list[str]:
    """The README's one-liner of `firehose <tool>`, as arguments of `firehose` (its tool name first)."""
    (line,) = [line for line in readme_table_commands() if argv(line)[:2] == ["firehose", tool]]
    return argv(line)[1:]
