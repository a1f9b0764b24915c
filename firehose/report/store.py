"""The local store of run summaries: every run's summary JSON kept on this machine, to list and compare later.

It lives in the user's data directory (`$XDG_DATA_HOME/firehose/runs`, by default `~/.local/share/firehose/runs`),
not beside the embedded database or the results, so `make clean` and `firehose reset` leave it; `FIREHOSE_RUNS_DIR`
points it elsewhere (every test does: a tmp directory). One file per run, named by when it started and its run id
(`20261203T161502-run12`): that name is the run's reference in `firehose runs`, `compare` and `--baseline`. The
target database keeps the same JSON too (`firehose_run_summaries`), with its run: `firehose runs --pg-dsn` and
`firehose compare --pg-dsn` read that copy instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

STORE_VARIABLE = "FIREHOSE_RUNS_DIR"


def store_dir() -> Path:
    """Where summaries are kept: $FIREHOSE_RUNS_DIR, else $XDG_DATA_HOME/firehose/runs, else ~/.local/share/..."""
    if given := os.environ.get(STORE_VARIABLE):
        return Path(given)
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "firehose" / "runs"


@dataclass(frozen=True)
class StoredRun:
    """One kept summary and its reference."""

    ref: str
    summary: dict

    @property
    def context(self) -> dict:
        return self.summary.get("context") or {}

    @property
    def label(self) -> str:
        return self.context.get("label") or ""

    @property
    def classes(self) -> list[str]:
        return self.context.get("classes") or sorted(self.summary["writes"]["by_class"])

    @property
    def started_at(self) -> str:
        return self.context.get("started_at") or ""


def save(summary: dict) -> StoredRun:
    """Keep `summary` in the store; returns it with its reference."""
    folder = store_dir()
    folder.mkdir(parents=True, exist_ok=True)
    started = summary.get("context", {}).get("started_at") or datetime.now(UTC).isoformat()
    stamp = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    ref, n = f"{stamp}-run{summary['run']['run_id']}", 1
    while (folder / f"{ref}.json").exists():  # two databases' runs with one id, started within one second
        n += 1
        ref = f"{stamp}-run{summary['run']['run_id']}-{n}"
    (folder / f"{ref}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return StoredRun(ref, summary)


def load_all() -> list[StoredRun]:
    """Every kept run, newest first (a file that is not a summary is skipped)."""
    found = []
    for path in store_dir().glob("*.json"):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and "run" in summary and "writes" in summary:
            found.append(StoredRun(path.stem, summary))
    return sorted(found, key=lambda run: (run.started_at, run.ref), reverse=True)


def load_database(conninfo: str) -> list[StoredRun]:
    """Every run summary the database keeps (`firehose_run_summaries`), newest first; a run's reference there is
    `run<id>` (its id in that database)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.run_id, s.summary FROM firehose_run_summaries AS s JOIN firehose_runs AS r USING (run_id)"
            " ORDER BY r.started_at DESC, s.run_id DESC"
        ).fetchall()
    return [StoredRun(f"run{run_id}", summary) for run_id, summary in rows]


def resolve(ref: str, runs: list[StoredRun] | None = None) -> list[StoredRun]:
    """The runs `ref` names: a summary JSON file, a stored run's reference, a label (every run under it), or a run
    id (the newest stored run with it). Empty when it names none."""
    path = Path(ref)
    if ref.endswith(".json") and path.is_file():
        return [StoredRun(path.stem, json.loads(path.read_text()))]
    runs = load_all() if runs is None else runs
    for matches in (
        [run for run in runs if run.ref == ref],
        [run for run in runs if run.label == ref],
        [run for run in runs if ref.isdigit() and run.summary["run"]["run_id"] == int(ref)][:1],
    ):
        if matches:
            return matches
    return []
