"""The table of strategies (firehose.strategies) is the only list of them: what Locust offers is the table's, no
module names a strategy by a string of its own, and a strategy added to the table alone reaches the tools."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firehose import strategies
from firehose.run import budget
from firehose.strategies import STRATEGIES, Strategy
from firehose.tools.bench import main as bench
from firehose.tools.headless import LOCUSTFILE, REPO
from firehose.tools.sweep import main as sweep
from users import Analyst
from users.engineer import Engineer
from writers.batched import BatchedWriter

NOT_STRATEGIES = {Analyst.__name__}
"""User classes locustfile.py exports that write nothing (no `writer_class`): the analysts only query."""


def exported_user_classes() -> list[str]:
    """The user classes Locust finds in locustfile.py (`locust --list`, as a user would ask)."""
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--list"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return listed.stdout.split("Available Users:", 1)[1].split()


def test_locust_offers_exactly_the_tables_strategies_and_the_analysts():
    exported = exported_user_classes()
    assert len(exported) == len(set(exported))
    assert set(exported) - NOT_STRATEGIES == {row.name for row in STRATEGIES}
    assert set(exported) >= NOT_STRATEGIES
    assert not hasattr(Analyst, "writer_class")  # what makes it no strategy


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every string constant in the module, docstrings left out (they document, not name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_strategy_is_named_by_a_string_outside_the_table():
    names = re.compile(r"\b(" + "|".join(re.escape(row.name) for row in STRATEGIES) + r")\b")
    table = REPO / "firehose" / "strategies.py"
    sources = [path for folder in ("firehose", "writers") for path in sorted((REPO / folder).rglob("*.py"))]
    assert table in sources and len(sources) > 40  # the scan sees the packages it guards
    found = [
        f"{path.relative_to(REPO)}:{line}: {value!r}"
        for path in sources
        if path != table
        for line, value in _string_literals(path)
        if names.search(value)
    ]
    assert found == []


def test_the_scan_finds_a_strategy_named_in_a_string(tmp_path):
    module = tmp_path / "example.py"
    module.write_text(
        '"""Docstrings may say CopyEngineer."""\nDEFAULT = "CopyEngineer"\nHELP = f"for {1} NaiveEngineer"\n'
    )
    assert [value for _, value in _string_literals(module)] == ["CopyEngineer", "for ", " NaiveEngineer"]


class ThrowawayEngineer(Engineer):
    """A strategy that exists only for this test: the batched writer, under another engineer class."""

    writer_class = BatchedWriter


@pytest.fixture
def with_throwaway(monkeypatch):
    """The table with one more row, the throwaway strategy's; nothing else is told of it."""
    row = Strategy(ThrowawayEngineer, reference="batched", goal=0.5, scale_option="--batched-pool-size")
    monkeypatch.setattr(strategies, "STRATEGIES", [*STRATEGIES, row])
    return row


def _budget_options(**given) -> argparse.Namespace:
    defaults = dict(batched_pool_size=7, analysts=0, migration_probe=0, master=True, expect_workers=2)
    return argparse.Namespace(**{**defaults, **given})


def test_a_strategy_without_a_row_is_refused_by_the_budget():
    with pytest.raises(LookupError, match="ThrowawayEngineer has no row"):
        budget.demand([ThrowawayEngineer], _budget_options(), processes=2, bouncer_started_here=False)


def test_a_strategy_added_to_the_table_alone_reaches_the_sweep_the_bench_and_the_budget(with_throwaway):
    name = ThrowawayEngineer.__name__
    # The sweep's grid: every strategy of the table by default, and a name the sweep accepts.
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    plan = sweep.plan_from_args(parser.parse_args(["--users", "1,2"]))
    assert name in plan.strategies and plan.strategies[0] == strategies.baseline().name
    assert sweep.plan_from_args(parser.parse_args(["--strategies", name])).strategies == [name]
    # The bench's strategies, with its goal and its reference.
    assert name in [row.name for row in bench.picked_strategies(None)]
    assert [row.name for row in bench.picked_strategies([name])] == [name]
    assert bench.reference_label(with_throwaway) == "pgbench batched, -M prepared"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args(["--strategy", name]).strategy == [name]
    # The connection budget: its pool, per writing process.
    run = budget.demand([ThrowawayEngineer], _budget_options(), processes=2, bouncer_started_here=False)
    assert run.pools == {"batched_pool_size": 7}
    assert run.total() == 2 * 7 + 2 * 1 + 2  # pools, a writer key per process, the coordinator's
    assert with_throwaway.connections == BatchedWriter.default_pool_size


def test_each_row_reads_its_writer():
    for row in STRATEGIES:
        assert row.writer is row.user_class.writer_class
        assert row.services == row.writer.services
        assert row.connections > 0, row.name
    assert strategies.baseline().own_reference
    assert [row.name for row in STRATEGIES if not row.own_reference] == [
        "StreamEngineer",
        "ValidatedCopyEngineer",
        "ValveEngineer",
    ]
    with pytest.raises(ValueError, match="unknown strategies NoSuchEngineer"):
        strategies.strategy_named("NoSuchEngineer")
