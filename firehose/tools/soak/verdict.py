"""The soak's accounting and verdict, from what it observed: the faults it injected, each worker's counters as its
reports arrived (probe.py), the writer keys its workers drew, and the summary the master wrote.

What each fault cost: the retries and seconds blocked (firehose's `retries` and `blocked_s` per strategy) that
the workers' reports added between that fault and the next. What each killed worker may have lost: the rows its
strategies held unacknowledged at its last report, except a strategy that loses nothing when its process dies
(`NOTHING_DIES_WITH`), whose share must be 0. The verdict holds when every check holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from users import StreamEngineer

NOTHING_DIES_WITH = frozenset({StreamEngineer.__name__})
"""Strategies whose crash bound is 0: what the stream's producer received is in Redis, and its dead consumers'
pending entries are claimed by the survivors (docs/reliability.md, "What a crash costs")."""
COST_COUNTERS = ("retries", "blocked_s")


def cumulative(lines: list[dict], until: float, class_of: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per strategy, the counters summed over workers at their latest report before `until` (a dead worker's last
    report stays: its counters only grow)."""
    latest: dict[str, dict] = {}
    for line in lines:
        if line["at"] < until:
            latest[line["client_id"]] = line
    totals: dict[str, dict[str, float]] = {}
    for line in latest.values():
        for writer, counters in line["writers"].items():
            row = totals.setdefault(class_of.get(writer, writer), dict.fromkeys(COST_COUNTERS, 0))
            for counter in COST_COUNTERS:
                row[counter] += counters[counter]
    return totals


def costs_between(lines: list[dict], start: float, end: float, class_of: dict[str, str]) -> dict[str, dict]:
    """Per strategy, the retries and seconds blocked the reports arriving in [start, end) added."""
    before, after = cumulative(lines, start, class_of), cumulative(lines, end, class_of)
    costs = {}
    for name, row in after.items():
        was = before.get(name, dict.fromkeys(COST_COUNTERS, 0))
        costs[name] = {
            "retries": int(row["retries"] - was["retries"]),
            "blocked_s": round(row["blocked_s"] - was["blocked_s"], 1),
        }
    return costs


def last_report_of(lines: list[dict], writer_key: int) -> dict | None:
    """The last counters line of the worker that wrote under `writer_key`."""
    found = [line for line in lines if line["writer_key"] == writer_key]
    return found[-1] if found else None


def crash_allowance(line: dict | None, class_of: dict[str, str]) -> dict[str, int]:
    """Per strategy, the rows a worker may have lost with it: received - acknowledged at its last report, 0 for the
    strategies in NOTHING_DIES_WITH (and no report at all: nothing received that anyone knows of)."""
    if line is None:
        return {}
    return {
        class_of.get(writer, writer): 0
        if class_of.get(writer, writer) in NOTHING_DIES_WITH
        else max(counters["received"] - counters["acknowledged"], 0)
        for writer, counters in line["writers"].items()
    }


def attribute_costs(faults: list[dict], lines: list[dict], class_of: dict[str, str]) -> dict[str, dict]:
    """Each injected fault gets `costs` (per strategy, what followed it until the next fault); returns what came
    before the first fault (should be nothing)."""
    injected = [fault for fault in faults if fault.get("at") is not None]
    starts = [fault["at"] for fault in injected]
    for fault, end in zip(injected, [*starts[1:], math.inf], strict=True):
        fault["costs"] = costs_between(lines, fault["at"], end, class_of)
    return costs_between(lines, 0, starts[0] if starts else math.inf, class_of)


def account(
    summary: dict | None,
    faults: list[dict],
    lines: list[dict],
    keys: dict[str, int],
    class_of: dict[str, str],
    guard: dict,
) -> dict:
    """The soak's accounting: per writer key, per killed worker, per fault, and the checks of the verdict.

    `keys`: each worker's name (its application_name) -> the writer key it drew; `guard`: whether the disk guard was
    seen watching after the last database restart (`{"watching": bool, "detail": str}`)."""
    before_faults = attribute_costs(faults, lines, class_of)
    name_of = {key: name for name, key in keys.items()}
    killed = [_killed(fault, keys, summary, lines, class_of) for fault in faults if fault["kind"] == "kill-worker"]
    checks = _checks(summary, faults, killed, guard)
    return {
        "before_faults": before_faults,
        "keys": _key_rows(summary, name_of) if summary is not None else [],
        "killed": killed,
        "checks": checks,
        "ok": all(check["ok"] for check in checks),
    }


def _killed(fault: dict, keys: dict[str, int], summary: dict | None, lines: list[dict], class_of: dict) -> dict:
    victim = fault.get("victim")
    key = keys.get(victim) if victim else None
    entry = next((e for e in (summary or {}).get("unaccounted", []) if e["writer_key"] == key), None)
    allowance = crash_allowance(last_report_of(lines, key), class_of) if key is not None else {}
    lost = entry["lost_with_it_at_least"] if entry is not None else None
    replacement = fault.get("replacement")
    return {
        "victim": victim,
        "replacement": replacement,
        "replacement_key": keys.get(replacement) if replacement else None,
        "writer_key": key,
        "named_in_summary": entry is not None,
        "state": entry["state"] if entry is not None else None,
        "received": entry["received"] if entry is not None else None,
        "in_database": entry["in_database"] if entry is not None else None,
        "lost_with_it_at_least": lost,
        "allowance": allowance,
        "within_bound": key is None or (lost is not None and lost <= sum(allowance.values())),
    }


def _key_rows(summary: dict, name_of: dict[int, str]) -> list[dict]:
    rows = [
        {
            "writer_key": row["writer_key"],
            "worker": name_of.get(row["writer_key"]),
            "state": "reported",
            "generated": row["generated"],
            "in_database": row["in_database"],
            "lost": row["lost"],
        }
        for row in summary["processes"]
    ]
    rows += [
        {
            "writer_key": entry["writer_key"],
            "worker": name_of.get(entry["writer_key"]),
            "state": entry["state"],
            "received_at_last_report": entry["received"],
            "in_database": entry["in_database"],
            "lost_with_it_at_least": entry["lost_with_it_at_least"],
        }
        for entry in summary["unaccounted"]
    ]
    return sorted(rows, key=lambda row: row["writer_key"])


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": bool(ok), "detail": detail}


def _checks(summary: dict | None, faults: list[dict], killed: list[dict], guard: dict) -> list[dict]:
    checks = [_check("the master wrote its summary", summary is not None, "--summary-json")]
    failed = [f"{fault['kind']}: {fault['error']}" for fault in faults if fault.get("error")]
    skipped = [fault["kind"] for fault in faults if fault.get("at") is None and not fault.get("error")]
    checks.append(
        _check(
            "every fault injected and recovered",
            not failed,
            "; ".join(failed)
            or f"{len(faults) - len(skipped)} injected"
            + (f"; not injected, the run was ending: {', '.join(skipped)}" if skipped else ""),
        )
    )
    if summary is not None:
        events = summary["events"]
        checks.append(_check("duplicates 0", events["duplicates"] == 0, f"duplicates {events['duplicates']:,}"))
        checks.append(
            _check(
                "nothing lost by the processes that reported",
                events["lost"] == 0 and events["failed"] == 0,
                f"lost {events['lost']:,}, failed {events['failed']:,} of {events['generated']:,} generated",
            )
        )
        victim_keys = {row["writer_key"] for row in killed if row["writer_key"] is not None}
        strays = sorted(
            entry["writer_key"] for entry in summary["unaccounted"] if entry["writer_key"] not in victim_keys
        )
        unnamed = sorted(
            row["victim"] for row in killed if row["writer_key"] is not None and not row["named_in_summary"]
        )
        checks.append(
            _check(
                "every unaccounted writer key is a killed worker's, and every killed worker's key is named",
                not strays and not unnamed,
                f"keys of no killed worker: {strays}; killed workers not named: {unnamed}"
                if strays or unnamed
                else f"{len(victim_keys)} killed worker(s) with a key, each named",
            )
        )
        expected = "INCOMPLETE" if victim_keys else "OK"
        verdict = summary["run"]["verdict"]
        checks.append(_check("the master's verdict", verdict == expected, f"{verdict} (expected {expected})"))
    beyond = [
        f"{row['victim']} (key {row['writer_key']}): lost at least {row['lost_with_it_at_least']} > "
        f"{sum(row['allowance'].values())} its strategies held unacknowledged"
        for row in killed
        if not row["within_bound"]
    ]
    checks.append(
        _check(
            "nothing lost beyond what each killed worker's strategies held (0 for "
            + ", ".join(sorted(NOTHING_DIES_WITH))
            + ")",
            not beyond,
            "; ".join(beyond) or f"{len(killed)} killed worker(s) within bound",
        )
    )
    checks.append(_check("the disk guard watching at the end", guard["watching"], guard["detail"]))
    return checks


def names(rows: Iterable[dict]) -> list[str]:
    """The failed checks' names."""
    return [row["check"] for row in rows if not row["ok"]]
