"""`firehose grow` at a tiny size: every results file written, each step's figures present and plausible, the
writers stopped at --to, the layout's data directory removed; and the settings it refuses."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from firehose import cli
from firehose.tools.grow.burst import DEPENDENCY_MAP
from users.queries import load_queries

MB = 1024**2
TO_MB, STEP_MB = 20, 5


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder the server's user may enter (pytest's own temporary folders are private to their owner, and another
    session may make them so again at any time)."""
    root = Path(tempfile.mkdtemp(prefix="firehose-grow-test-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_grow_records_each_step_and_stops_at_the_size(scratch, tmp_path):
    out, data = tmp_path / "out", scratch / "data"
    code = cli.main(
        ["grow", "--layout", "partitioned", "--to", f"{TO_MB}MB", "--step", f"{STEP_MB}MB", "--burst", "1s",
         "--users", "4", "--partition-interval", "1h", "--data-dir", str(data), "--out", str(out),
         "--", "--copy-batch-size", "500", "--engineer-rate", "500"]
    )  # fmt: skip
    assert code == 0, (out / "partitioned-writer.log").read_text()[-3000:]
    assert {"grow.md", "grow.csv", "grow.json", "grow.png"} <= {path.name for path in out.iterdir()}
    assert (out / "grow.png").read_bytes()[:4] == b"\x89PNG"
    assert not data.exists()  # the layout's server stopped and its data removed (the folder grow made, too)

    document = json.loads((out / "grow.json").read_text())
    result = document["layouts"]["partitioned"]
    assert result["reached"] and result["stopped"] == f"reached --to {TO_MB:.1f} MB"
    steps = result["steps"]
    # A mark every 5 MB up to 20 MB from the first rows on, at ~5 MB/s (4 engineers offering 500 rows/s each): the
    # size is read every second, and a burst writes on, so a step may pass a mark or two.
    assert len(steps) >= 2
    sizes = [step["size_bytes"] for step in steps]
    assert sizes == sorted(sizes) and sizes[0] >= STEP_MB * MB and sizes[-1] >= TO_MB * MB
    assert result["final"]["size_bytes"] >= sizes[-1]  # stopped: after the last burst, no further mark
    assert result["writer"]["exit_code"] == 0 and result["writer"]["events"]["lost"] == 0
    for step in steps:
        writing, burst = step["writing"], step["burst"]
        # A backend reports its inserts within ~1 s: a phase of a second or two here may see none of its rows yet.
        assert writing["seconds"] >= 0 and writing["rows"] >= 0 and writing["wal_bytes"] >= 0
        assert writing["rows_per_s"] is None or 0 <= writing["rows_per_s"] < 1_000_000
        assert burst["seconds"] >= 1 and burst["rows_per_s"] is not None
        for phase in (writing, burst):
            assert phase["hit_ratio"] is None or 0 <= phase["hit_ratio"] <= 1
            assert phase["read_bytes"] >= 0 and phase["checkpoints_timed"] >= 0
        assert step["partitions"] >= 1 and step["index_bytes"] > 0
        queries = burst["queries"]
        assert set(queries) == set(load_queries())
        for name, query in queries.items():
            assert query["failures"] == 0, query["error"]
            assert query["count"] + query["cut"] >= 1
            assert query["window_s"] == (86_400 if name == DEPENDENCY_MAP else 3_600)
            if query["count"]:
                assert 0 < query["p50_ms"] <= query["p95_ms"] <= query["max_ms"]
    counted = sum(step[phase]["rows"] for step in steps for phase in ("writing", "burst"))
    inserted = result["final"]["rows"]  # read once the writers' backends had gone: every insert reported
    assert 0 < counted <= inserted == result["writer"]["events"]["in_database"]
    assert result["final"]["wal_bytes"] - result["begin"]["wal_bytes"] > inserted * 1000  # a row is KBs of WAL
    assert steps[-1]["data_span_h"] > 0  # live timestamps: the newest data moved forward

    with (out / "grow.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(steps) and int(rows[-1]["size_bytes"]) == sizes[-1]
    p95 = steps[0]["burst"]["queries"][DEPENDENCY_MAP]["p95_ms"]  # None when the burst cut every execution short
    assert rows[0][f"{DEPENDENCY_MAP}_p95_ms"] == ("" if p95 is None else str(p95))
    markdown = (out / "grow.md").read_text()
    assert "## partitioned" in markdown and "past shared_buffers | not reached" in markdown


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--layout", "plain,sideways"], "--layout: choose from plain, partitioned"),
        (["--to", "1GB", "--step", "2GB"], "--step must be more than 0 and at most --to"),
        (["--burst", "61s"], "--burst must be more than 0 and at most 60s"),
        (["--to", "lots"], "--to: 'lots' is not a size"),
        (["--strategy", "NoSuchEngineer"], "NoSuchEngineer"),
    ],
)
def test_grow_refuses_bad_settings_with_one_line(args, said, tmp_path, capsys):
    assert cli.main(["grow", *args, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("firehose grow: ") and said in error and len(error.splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_grow_refuses_a_layout_folder_that_exists(tmp_path, capsys):
    (tmp_path / "data" / "plain").mkdir(parents=True)
    assert cli.main(["grow", "--layout", "plain", "--data-dir", str(tmp_path / "data")]) == 2
    assert "exists: grow starts each layout in a new one" in capsys.readouterr().err
