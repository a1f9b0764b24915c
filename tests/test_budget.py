"""The connection budget: a run that needs more server connections than PostgreSQL has free is refused before it
starts (one line, exit code 2), or with --shrink-pools runs with its per-process pools shrunk, and reconciles."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import argparse
import subprocess
import sys
import tempfile

import psycopg
import pytest

from firehose.run.exit_codes import ExitCode
from firehose.run import budget
from firehose.tools.headless import LOCUSTFILE, run_bounded
from services.ports import free_port
from services.postgres import redact
from tests.conftest import load_summary, run_locust
from users import Analyst, CopyEngineer, NaiveEngineer, PooledEngineer, StreamEngineer

MAX_CONNECTIONS = 12
SUPERUSER_RESERVED = 3


def _options(**given) -> argparse.Namespace:
    defaults = dict(
        copy_pool_size=2, naive_pool_size=50, pooled_pool_size=20, stream_consumers=4, analyst_pool_size=8,
        analysts=0, migration_probe=0, master=False, expect_workers=1, shrink_pools=False,
    )  # fmt: skip
    return argparse.Namespace(**{**defaults, **given})


def test_demand_counts_pools_per_process_and_the_shared_parts_once():
    options = _options(master=True, expect_workers=3, analysts=2, migration_probe=5)
    run = budget.demand(
        [CopyEngineer, StreamEngineer, PooledEngineer, Analyst], options, processes=3, bouncer_started_here=True
    )
    assert run.pools == {"copy_pool_size": 2, "stream_consumers": 4, "analyst_pool_size": 8}
    # pools: 3 x (2 + 4), analysts in 2 of 3 processes; per process: writer key, probe; once: pgBouncer, coordinator
    assert run.total() == 3 * (2 + 4) + 2 * 8 + 3 * (1 + 1) + 20 + 2
    given_bouncer = budget.demand([PooledEngineer], options, processes=3, bouncer_started_here=False)
    assert "pgBouncer server pool" not in given_bouncer.once and given_bouncer.pools == {}


def test_shrinking_scales_every_pool_by_one_factor_and_never_below_one():
    run = budget.demand([NaiveEngineer, CopyEngineer], _options(), processes=2, bouncer_started_here=True)
    pools = budget.shrunk_pools(run, free=40)
    assert run.total(pools) <= 40 < run.total()
    factor = (40 - run.fixed()) / (run.total() - run.fixed())
    assert pools == {"naive_pool_size": int(50 * factor), "copy_pool_size": max(1, int(2 * factor))}
    assert budget.shrunk_pools(run, free=run.fixed() + 3) is None  # 2 processes x 2 pools of 1 do not fit in 3


def test_processes_are_the_expected_workers_of_a_master():
    assert budget.writing_processes(_options()) == 1
    assert budget.writing_processes(_options(master=True, expect_workers=4)) == 4


@pytest.fixture
def small_server(own_postgres):
    """A PostgreSQL of the test's own with a small max_connections (the session's server is left alone)."""
    settings = {
        "max_connections": str(MAX_CONNECTIONS),
        "superuser_reserved_connections": str(SUPERUSER_RESERVED),
        "shared_buffers": "64MB",
    }
    return own_postgres(settings=settings)


def _reserved(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return int(conn.execute("SELECT coalesce(current_setting('reserved_connections', true), '0')").fetchone()[0])


@pytest.mark.slow
def test_a_run_past_max_connections_is_refused_with_the_budget(small_server):
    dsn = small_server.dsn
    reserved = _reserved(dsn)
    free = MAX_CONNECTIONS - SUPERUSER_RESERVED - reserved
    result = run_locust(
        "CopyEngineer", "-u", "2", "-r", "2", "-t", "30s", "--pg-dsn", dsn, "--copy-pool-size", "8", timeout=60
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    first = next(line for line in result.stderr.splitlines() if line.startswith("firehose:"))
    assert first == (
        f"firehose: the run needs {8 + 1 + 2} server connections (1 x --copy-pool-size 8 + 1 x writer key 1 + "
        f"coordinator 2) but PostgreSQL at {redact(dsn)} has max_connections {MAX_CONNECTIONS} - "
        f"superuser_reserved_connections {SUPERUSER_RESERVED} - reserved_connections {reserved} - 0 in use = "
        f"{free} free: lower the pool sizes or the processes, or pass --shrink-pools"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM firehose_runs").fetchone()[0] == 0  # refused before the run


@pytest.mark.slow
def test_shrink_pools_fits_two_processes_and_the_run_reconciles(small_server, tmp_path):
    """2 processes x 8 COPY connections cannot open on 9 free (each pool opens whole, or the run fails): shrunk."""
    summary_path = tmp_path / "summary.json"
    result = run_locust(
        "CopyEngineer", "-u", "4", "-r", "4", "-t", "60s", "--traces-per-engineer", "10",
        "--pg-dsn", small_server.dsn, "--copy-pool-size", "8", "--shrink-pools",
        "--summary-json", str(summary_path), "--processes", "2", timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = load_summary(summary_path)
    plan = summary["connection_budget"]
    after = plan["shrunk"]["copy_pool_size"][1]
    assert plan["shrunk"] == {"copy_pool_size": [8, after]} and 1 <= after < 8
    assert plan["processes"] == 2 and plan["needed"] <= plan["free"]
    [line] = [line for line in output.splitlines() if "firehose shrinks the per-process pools" in line]
    assert line.endswith(f"--copy-pool-size 8 -> {after}")
    events = summary["events"]
    assert events["lost"] == 0 and events["duplicates"] == 0 and events["in_database"] == events["generated"] > 0


@pytest.mark.slow
def test_a_run_started_from_the_web_ui_past_the_budget_stops_before_it_writes(small_server, tmp_path):
    """With the web UI the classes and sizes come with the form: checked at test start, the run stops at once."""
    summary_path = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "CopyEngineer", "--autostart", "--autoquit", "0",
        "-u", "2", "-r", "2", "-t", "5s", "--web-host", "127.0.0.1", "--web-port", str(free_port()),
        "--pg-dsn", small_server.dsn, "--copy-pool-size", "8", "--summary-json", str(summary_path),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        returncode, timed_out = run_bounded(command, 90, output, subprocess.STDOUT)
        output.seek(0)
        text = output.read()
    assert returncode == ExitCode.STOPPED and not timed_out, text[-3000:]
    summary = load_summary(summary_path)
    reason = summary["run"]["stopped_by"]
    assert reason.startswith("the run needs 11 server connections (1 x --copy-pool-size 8 + ")
    assert f"firehose stops the run: {reason}" in text
    assert summary["events"]["generated"] == summary["events"]["in_database"] == 0  # stopped before any write
