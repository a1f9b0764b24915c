"""No password leaves the run: a run made with passwords in its DSNs (writers, pgBouncer in front, analysts),
driven from the web UI, leaves no trace of them in its output, log file, summary JSON, HTML report, CSV files or
any page and JSON endpoint of the web UI; a refused DSN's message does not carry its password either."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress

import pytest
from psycopg.conninfo import make_conninfo

from services.ports import free_port
from tests.conftest import REPO, load_summary, run_locust

pytestmark = pytest.mark.slow

SECRET = "Pw-7f3a-never-printed"
WAIT_S = 120
PAGES = ("/", "/stats/requests", "/stats/report", "/telemetry", "/telemetry/data", "/tasks", "/exceptions")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode(errors="replace")


def test_no_artifact_of_a_run_made_with_passwords_holds_them(dsn, tmp_path):
    """The test server trusts loopback, so the passwords are not checked: what is checked is where they travel."""
    with_password = make_conninfo(dsn, password=SECRET)
    port, prefix = free_port(), tmp_path / "stats"
    output = tmp_path / "output.log"
    command = [
        *(sys.executable, "-m", "locust", "-f", "locustfile.py", "CopyEngineer", "PooledEngineer", "Analyst"),
        *("--web-host", "127.0.0.1", "--web-port", str(port), "--autostart", "--autoquit", "5"),
        *("-u", "6", "-r", "6", "-t", "10s", "--continuous", "--analysts", "2"),
        *("--engineer-rate", "300", "--analyst-think-time", "0.25"),  # paced: where passwords go, not how fast
        *("--pg-dsn", with_password, "--analyst-dsn", with_password, "--summary-json", str(tmp_path / "summary.json")),
        *("--html", str(tmp_path / "report.html"), "--csv", str(prefix), "--csv-full-history"),
        *("--logfile", str(tmp_path / "locust.log"), "--loglevel", "DEBUG"),
    ]
    pages: dict[str, str] = {}
    with output.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while '"state": "running"' not in pages.get("/stats/requests", "").replace('":"', '": "'):
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            with suppress(OSError):
                pages["/stats/requests"] = _get(f"http://127.0.0.1:{port}/stats/requests")
            time.sleep(0.2)
        while "PooledEngineer" not in pages.get("/telemetry/data", ""):  # rows written through pgBouncer shown
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            pages["/telemetry/data"] = _get(f"http://127.0.0.1:{port}/telemetry/data")
            time.sleep(0.2)
        pages.update((page, _get(f"http://127.0.0.1:{port}{page}")) for page in PAGES)
        assert process.wait(WAIT_S) == 0, output.read_text()[-3000:]
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    summary = load_summary(tmp_path / "summary.json")
    assert summary["events"]["lost"] == 0 and summary["writes"]["by_class"]["PooledEngineer"]["acknowledged"] > 0
    assert summary["queries"], "the analysts ran through their DSN"
    artifacts = {path.name: path.read_text(errors="replace") for path in tmp_path.iterdir() if path.is_file()}
    assert {"output.log", "locust.log", "summary.json", "report.html", "stats_stats.csv"} <= artifacts.keys()
    assert "127.0.0.1" in artifacts["summary.json"]  # the DSN is there, redacted
    everything = {**artifacts, **{f"web UI {page}": body for page, body in pages.items()}}
    assert all(body for body in everything.values())
    leaks = sorted(name for name, body in everything.items() if SECRET in body)
    assert not leaks, f"the password is in {leaks}"


def test_a_refused_dsn_does_not_print_its_password():
    result = run_locust(
        "CopyEngineer", "-u", "1", "-r", "1", "--pg-dsn", f"host=127.0.0.1 port=9 password={SECRET} connect_timeout=2",
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "\nfirehose: cannot connect to PostgreSQL at password=*** " in result.stderr, result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr
