"""`firehose soak`: the schedule, the verdict's arithmetic, and a tiny soak whose report accounts for each fault."""

import locust  # noqa: F401, I001  (first: gevent must patch before psycopg is imported)

import json

import pytest

from firehose import cli
from firehose.tools.soak.main import KINDS, fixed_schedule, schedule
from firehose.tools.soak.verdict import account
from tests.conftest import load_summary
from tests.readme import readme_tool_command

CLASS_OF = {"CopyWriter": "CopyEngineer", "StreamWriter": "StreamEngineer"}


def test_a_schedule_is_the_seeds_each_kind_once_a_round_within_its_gaps_and_span():
    plan = schedule(42, list(KINDS), span_s=570, gaps=(30, 90))
    assert plan == schedule(42, list(KINDS), span_s=570, gaps=(30, 90)) != schedule(43, list(KINDS), 570, (30, 90))
    times = [fault.at_s for fault in plan]
    assert all(30 <= later - earlier <= 90 for earlier, later in zip([0, *times], times, strict=False))
    assert times[-1] <= 570 and len(plan) >= len(KINDS)
    assert sorted(fault.kind for fault in plan[: len(KINDS)]) == sorted(KINDS)
    assert [(f.at_s, f.kind) for f in fixed_schedule(["redis", "kill-worker"], 5)] == [
        (5, "redis"),
        (10, "kill-worker"),
    ]


def _line(at: float, client: str, key: int, copy: tuple[int, int, int], stream: tuple[int, int, int]) -> dict:
    """A probe line: per writer (received, acknowledged, retries)."""
    return {
        "at": at,
        "client_id": client,
        "writer_key": key,
        "writers": {
            writer: {"received": r, "acknowledged": a, "failed": 0, "quarantined": 0, "retries": t, "blocked_s": t / 2}
            for writer, (r, a, t) in (("CopyWriter", copy), ("StreamWriter", stream))
        },
    }


def _summary(lost_with_victim: int, strays: tuple[int, ...] = ()) -> dict:
    unaccounted = [{"writer_key": key, "state": "missing", "received": 900, "in_database": 0} for key in (1, *strays)]
    unaccounted[0].update(in_database=900 - lost_with_victim)
    for entry in unaccounted:
        entry["lost_with_it_at_least"] = entry["received"] - entry["in_database"]
    return {
        "run": {"verdict": "INCOMPLETE"},
        "events": {"generated": 500, "lost": 0, "failed": 0, "duplicates": 0},
        "processes": [{"writer_key": 2, "generated": 500, "in_database": 500, "lost": 0}],
        "unaccounted": unaccounted,
    }


LINES = [  # worker 1 (key 1) reports twice, then is killed; worker 2 (key 2) three times
    _line(10, "w1", 1, (100, 100, 0), (50, 50, 0)),
    _line(10, "w2", 2, (100, 100, 0), (50, 50, 0)),
    _line(20, "w1", 1, (600, 400, 3), (300, 290, 1)),
    _line(20, "w2", 2, (300, 300, 5), (200, 200, 0)),
    _line(30, "w2", 2, (400, 400, 9), (250, 250, 0)),
]
FAULTS = [{"kind": "postgres-fast", "at": 15.0}, {"kind": "kill-worker", "at": 25.0, "victim": "soak-worker-1"}]
GUARD = {"watching": True, "detail": "seen"}


def _account(summary: dict) -> dict:
    faults = [dict(fault) for fault in FAULTS]
    result = account(summary, faults, LINES, {"soak-worker-1": 1, "soak-worker-2": 2}, CLASS_OF, GUARD)
    return {**result, "faults": faults}


def test_each_fault_gets_the_retries_reported_until_the_next_one():
    result = _account(_summary(lost_with_victim=200))
    restart, kill = result["faults"]
    assert restart["costs"] == {
        "CopyEngineer": {"retries": 8, "blocked_s": 4.0},
        "StreamEngineer": {"retries": 1, "blocked_s": 0.5},
    }
    assert kill["costs"]["CopyEngineer"] == {"retries": 4, "blocked_s": 2.0}
    assert result["before_faults"] == {
        "CopyEngineer": {"retries": 0, "blocked_s": 0},
        "StreamEngineer": {"retries": 0, "blocked_s": 0},
    }


def test_a_killed_worker_may_lose_what_its_bounded_strategies_held_and_nothing_of_the_streams():
    within = _account(_summary(lost_with_victim=200))  # COPY held 600 - 400 unacknowledged; the stream's 10 count 0
    assert within["killed"][0]["allowance"] == {"CopyEngineer": 200, "StreamEngineer": 0}
    assert within["ok"], within["checks"]
    beyond = _account(_summary(lost_with_victim=201))
    assert [check["check"] for check in beyond["checks"] if not check["ok"]] == [
        "nothing lost beyond what each killed worker's strategies held (0 for StreamEngineer)"
    ]


def test_an_unaccounted_key_no_killed_worker_drew_fails_the_verdict():
    result = _account(_summary(lost_with_victim=0, strays=(7,)))
    failed = [check for check in result["checks"] if not check["ok"]]
    assert [check["check"] for check in failed] == [
        "every unaccounted writer key is a killed worker's, and every killed worker's key is named"
    ]
    assert "[7]" in failed[0]["detail"]


@pytest.mark.slow
def test_a_tiny_soak_accounts_for_each_fault(own_postgres, tmp_path):
    data_dir = own_postgres(start=False).data_dir  # the session's template copied: no initdb of its own
    code = cli.main(
        [
            *readme_tool_command("soak"), "--data-dir", str(data_dir), "--duration", "20s", "--users", "3",
            "--faults", "postgres-fast,redis,kill-worker", "--every", "3s", "--seed", "7", "--out", str(tmp_path),
            "--", "--engineer-rate", "200", "--stream-claim-idle", "2",
        ]
    )  # fmt: skip
    result = json.loads((tmp_path / "soak.json").read_text())
    summary = load_summary(tmp_path / "summary.json")
    faults = {fault["kind"]: fault for fault in result["faults"]}
    assert sorted(faults) == ["kill-worker", "postgres-fast", "redis"]
    assert all(fault["at"] is not None and fault["error"] is None for fault in faults.values()), faults
    assert sum(row["retries"] for row in faults["postgres-fast"]["costs"].values()) > 0  # every connection was cut
    (killed,) = result["killed"]
    assert killed["writer_key"] is not None and killed["named_in_summary"] and killed["within_bound"], killed
    assert {row["writer_key"] for row in result["keys"]} >= {killed["writer_key"]}
    failed = {check["check"] for check in result["verdict"]["checks"] if not check["ok"]}
    assert not failed and code == 0, result["verdict"]
    assert summary["disk_guard"]["reconnects"] >= 1 and not summary["disk_guard"]["blind_at_end"], summary["disk_guard"]
    report = (tmp_path / "soak.md").read_text()
    assert all(f"| {kind} |" in report for kind in faults)
