"""The README and docs/ say what the code does: short README, every option explained, every command line works.

Convention: a command a reader may copy stands in a fenced block marked `sh` (one command a line; `console` and
`text` blocks are illustrations that need a machine or a server of the reader's own), or in the README's Commands
table. Every such line must parse as written (fast, in process); the README's quick start and its Commands table
are also run, with tiny sizes appended (argparse and Locust keep the last value of an option) against a database
of the test's own.
"""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import ast
import importlib
import importlib.metadata
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import psycopg
import pytest
from locust import argument_parser
from packaging.requirements import Requirement

from firehose import cli
from tests.readme import README, argv, readme_table_commands
from firehose.tools.headless import run_bounded
from services.ports import free_port

REPO = Path(__file__).resolve().parent.parent

PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
LOCUST_SERIES = "2.47"
"""The Locust whose web UI and hooks firehose's extensions and their tests are written against."""


def docs_text() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def shell_lines(markdown: str) -> list[str]:
    """The command lines of ```sh blocks (continuations joined, comments and `. activate` left out)."""
    lines, block, pending = [], None, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block != "sh":
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        command, pending = pending.strip(), ""
        if command and not command.startswith("#") and not command.startswith(". "):
            lines.append(command)
    return lines


def readme_quick_start() -> list[str]:
    return shell_lines(README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0])


_LOCUST_PARSER = None


def locust_parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """Locust's parser with the locustfile's options (as `locust -f locustfile.py` builds it), and Locust's own."""
    global _LOCUST_PARSER
    if _LOCUST_PARSER is None:
        own = argument_parser.get_empty_argument_parser(add_help=True)
        argument_parser.setup_parser_arguments(own)
        importlib.import_module("locustfile")  # registers firehose's options on Locust's events
        _LOCUST_PARSER = argument_parser.get_parser(), {o for action in own._actions for o in action.option_strings}
    return _LOCUST_PARSER


def firehose_options() -> dict[str, list[str]]:
    """Command -> its options: firehose's options of a Locust run, and each `firehose` subcommand's."""
    parser, locust_own = locust_parser()
    found = {"locust -f locustfile.py": [o for a in parser._actions for o in a.option_strings if o not in locust_own]}
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in cli.COMMANDS:
        found[f"firehose {name}"] = [
            o for a in subparsers.choices[name]._actions for o in a.option_strings if o not in ("-h", "--help")
        ]
    return found


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_every_option_of_every_command_is_explained_on_some_page():
    text = docs_text()
    missing = {
        command: [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
        for command, options in firehose_options().items()
    }
    assert not {command: options for command, options in missing.items() if options}


def test_the_options_found_include_the_ones_the_issue_named():  # so the check above cannot pass by finding none
    options = firehose_options()
    assert {"--embedded-port", "--copy-batch-size", "--analysts"} <= set(options["locust -f locustfile.py"])
    assert {"--strategies", "--cell-timeout", "--out"} <= set(options["firehose sweep"])
    assert {"--engineers", "--strategy-users", "--out"} <= set(options["firehose bench"])
    assert {"--window", "--write-sample", "--out"} <= set(options["firehose optimize"])


def test_the_installed_locust_is_the_pinned_one():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    locust_requirement = next(Requirement(d) for d in dependencies if Requirement(d).name == "locust")
    admits = locust_requirement.specifier.contains
    assert admits(f"{LOCUST_SERIES}.0") and admits(f"{LOCUST_SERIES}.9")
    major, minor = map(int, LOCUST_SERIES.split("."))
    assert not admits(f"{major}.{minor - 1}.99") and not admits(f"{major}.{minor + 1}.0")
    installed = importlib.metadata.version("locust")
    assert admits(installed) and installed.startswith(f"{LOCUST_SERIES}.")


def test_every_test_the_docs_cite_exists():
    cited = set(re.findall(r"tests/(test_\w+\.py)(?:::(\w+))?", docs_text()))
    files = sorted({file for file, _ in cited})
    assert files, "the docs cite no test: the pattern is wrong"
    assert not [file for file in files if not (REPO / "tests" / file).exists()]
    defined = {file: _test_functions(REPO / "tests" / file) for file in files}
    assert not sorted(f"tests/{file}::{name}" for file, name in cited if name and name not in defined[file])


def _test_functions(path: Path) -> set[str]:
    """The test functions pytest collects from `path` (module level, the way this suite writes them)."""
    return {
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


DOCUMENTED = sorted(
    {(page.name, line) for page in PAGES for line in shell_lines(page.read_text())}
    | {("README.md", line) for line in readme_table_commands()}
)


def test_the_convention_finds_the_readme_commands():
    programs = [" ".join(argv(line)[:2]) for line in readme_table_commands()]
    assert {"firehose sweep", "firehose bench", "firehose chaos", "firehose optimize"} <= set(programs)
    assert programs.count("locust -f") >= 3  # a headless run, the web UI, workers
    assert {"make run", "make test"} <= set(readme_quick_start())


@pytest.mark.parametrize(("page", "command"), DOCUMENTED)
def test_every_documented_command_line_parses_as_written(page, command):
    words = argv(command)
    program, args = words[0], words[1:]
    if program == "locust":
        parser, _ = locust_parser()
        options = parser.parse_args(args)
        assert (REPO / options.locustfile).exists()
        assert set(options.user_classes) <= set(importlib.import_module("locustfile").__all__) | {"Analyst"}
    elif program == "firehose":
        cli.build_parser().parse_args(args)
    elif program == "make":
        subprocess.run(["make", "-n", *args], cwd=REPO, check=True, capture_output=True)
    else:
        pytest.fail(f"{page}: `{command}`: no check for {program} (put it in a `console` block)")


@pytest.fixture(scope="module")
def docs_dsn(postgres):
    """A database of its own on the tests' server: the tools refuse one holding other tests' tables."""
    name = "firehose_docs"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return psycopg.conninfo.make_conninfo(postgres.dsn, dbname=name)


def tiny(words: list[str], dsn: str, out: Path) -> list[str]:
    """The command with tiny sizes appended (the last value of an option wins) and the test's own database."""
    program, args = words[0], words[1:]
    if program == "locust":
        extra = ["--pg-dsn", dsn, "--traces-per-engineer", "2", "--summary-json", str(out / "summary.json")]
        if "-u" in args:
            extra += ["-u", "10", "-r", "10"]  # 10: room for the documented --analysts 8 beside engineers
        if "--processes" in args:
            port = str(free_port())
            extra += ["--master-bind-port", port, "--master-port", port]
        return [str(BIN / "locust"), *args, *extra]
    sizes = {
        "sweep": ["--users", "2", "--duration", "2s", "--no-references"],
        "bench": ["--only", "generator"],  # the whole --quick run is test_bench's
        "chaos": ["--users", "2", "--duration", "2s", "--prefill", "1000", "--analysts", "1"],
        "optimize": ["--users", "2", "--history", "3h", "--repeat", "1", "--write-sample", "500"],
    }
    if program == "firehose" and args[0] == "reset":
        return [str(BIN / "firehose"), *args, "--embedded-data-dir", str(out / "no-data-dir")]
    assert program == "firehose" and args[0] in sizes, words
    return [str(BIN / "firehose"), *args, *sizes[args[0]], "--pg-dsn", dsn, "--out", str(out / "results"), "--yes"]


def make_recipe(target: str) -> list[str]:
    """The locust command of a make target's recipe, as `make -n` prints it."""
    printed = subprocess.run(["make", "-n", target], cwd=REPO, check=True, capture_output=True, text=True).stdout
    line = next(line for line in printed.replace("\\\n", " ").splitlines() if "bin/locust " in line)
    return ["locust", *argv(line)[1:]]


def test_make_run_runs_the_readmes_headless_run():  # so running that line (below) runs make run's recipe
    parser, _ = locust_parser()
    recipe = vars(parser.parse_args(make_recipe("run")[1:]))
    headless = next(line for line in readme_table_commands() if "--headless" in line and "--processes" not in line)
    documented = vars(parser.parse_args(argv(headless)[1:]))
    outputs = {"only_summary", "summary_json"}  # where the results go, not what runs
    assert {k: v for k, v in recipe.items() if k not in outputs} == {
        k: v for k, v in documented.items() if k not in outputs
    }


RUN_BY_THEIR_TOOLS_TESTS = {
    "chaos": "tests/test_chaos.py",
    "sweep": "tests/test_sweep.py",
    "soak": "tests/test_soak.py",
    "capacity": "tests/test_capacity.py",
}
"""README one-liners that their tool's own test runs (with its tiny sizes, checking every result), so they run once."""


def test_the_tools_tests_run_the_readmes_lines():
    for tool, test_file in RUN_BY_THEIR_TOOLS_TESTS.items():
        assert f'readme_tool_command("{tool}")' in (REPO / test_file).read_text(), test_file


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", [line for line in readme_table_commands() if argv(line)[1] not in RUN_BY_THEIR_TOOLS_TESTS]
)  # the quick start's make lines: see above
def test_the_readme_commands_work_with_tiny_sizes(command, docs_dsn, tmp_path):
    words = argv(command)
    line = tiny(words, docs_dsn, tmp_path)
    if "--headless" in words or words[0] != "locust":
        log = tmp_path / "output.log"
        with log.open("w") as output:  # its own process group, killed whole (forked workers too) past the bound
            returncode, timed_out = run_bounded(line, 240, output, subprocess.STDOUT)
        assert returncode == 0 and not timed_out, f"{' '.join(line)}\n{log.read_text(errors='replace')[-4000:]}"
        return
    port = free_port()  # the web UI: it answers, then Ctrl-C ends it cleanly
    log = tmp_path / "webui.log"
    with log.open("w") as stderr:
        web = subprocess.Popen([*line, "--web-port", str(port)], cwd=REPO, stderr=stderr)
    try:
        assert "locust" in page_once_served(f"http://127.0.0.1:{port}/", web).lower(), log.read_text()[-3000:]
    finally:
        web.send_signal(signal.SIGINT)
        web.wait(timeout=60)
    assert web.returncode == 0, log.read_text()[-3000:]


def page_once_served(url: str, server: subprocess.Popen, deadline_s: float = 60) -> str:
    """The page at `url` as soon as the server answers (it binds a moment after it logs its address)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                return page.read().decode()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling the observed state: the server's socket


def test_the_quick_start_is_make_run_and_make_test():  # checked by make -n (above), make run by its recipe
    assert readme_quick_start() == ["make run", "make test"]


def test_make_clean_removes_what_the_docs_say():
    printed = subprocess.run(["make", "-n", "clean"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    removed = next(line for line in printed.splitlines() if line.startswith("rm -rf")).split()
    assert {".venv", "results", ".pytest_cache", ".ruff_cache", ".hypothesis", ".import_linter_cache"} <= set(removed)
    assert "reset --remove" in printed and 'glob("postgres-*/")' in printed  # bench --pg-bin's data directories too
