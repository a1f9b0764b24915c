"""The report of `firehose capacity`: per strategy the verdict, every probe's figures, and the chart."""

from __future__ import annotations

from pathlib import Path

CHART_SIZE_IN = (11, 4.5)
CHART_DPI = 120


def verdict(strategy: str, row: dict, settings: dict) -> str:
    """ "serves N engineers at E events/day (peak X events/s), limited by ...", with the search's precision."""
    events = f"{settings['events_per_engineer_day']:,g} events/day"
    peak = f"peak {row['served_per_s']:,.0f} events/s" + (
        f", the busiest hour of an {settings['day_shape']} day" if settings["day_shape"] != "flat" else ""
    )
    if not row["served"]:
        return f"{strategy}: held at no population probed (down to {row['failed']:,}); limited by {row['limit']}"
    if row["failed"] is None:
        return f"{strategy}: serves at least {row['served']:,} engineers at {events} ({peak}): no probe failed"
    spread = "not measured (under two saturated probes)" if row["spread"] is None else f"{row['spread']:.0%}"
    return (
        f"{strategy}: serves {row['served']:,} engineers at {events} ({peak}), limited by {row['limit']}; "
        f"{row['failed']:,} did not hold (bracket +{row['bracket']:.0%}; precision asked {row['precision']:.0%}, "
        f"run-to-run spread of the saturated probes' ceilings {spread})"
        + (" - probe budget spent before the bracket was that narrow" if row["exhausted"] else "")
    )


def render_markdown(document: dict) -> str:
    """capacity.md: settings, then per strategy its verdict, its ceiling in rows/s and the table of probes."""
    settings, machine = document["settings"], document["machine"]
    lines = [
        "# firehose capacity",
        "",
        f"{settings['date']}, {machine.get('cores', '?')} cores, PostgreSQL {machine.get('postgres_version', '?')}; "
        f"{settings['users']} gateways (Locust users), {settings['duration']} per probe; a probe holds when its p99 "
        f"lag behind schedule < {settings['lag_bound_s']:g} s, freshness p99 < {settings['freshness_bound_s']:g} s, "
        "lost 0 and exit code 0.",
        "",
    ]
    for strategy, row in document["strategies"].items():
        ceiling = row["ceiling_rows_per_s"]
        lines += [
            f"## {strategy}",
            "",
            verdict(strategy, row, settings),
            "",
            "In the reference's units: "
            + (
                f"a ceiling of {ceiling:,.0f} rows/s (the saturated probes' best achieved events/s; one event is one "
                "row)."
                if ceiling
                else "no probe saturated the server, so no ceiling was measured."
            ),
            "",
            "| engineers | offered events/s | achieved | lag p50 / p99 / max s | freshness p99 s | lost "
            "| client CPU cores | server CPU cores | holds |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for probe in row["probes"]:
            cpu = probe["cpu"]
            wall = cpu["wall_s"] or 1.0
            client = cpu["cpu_s"].get("client: Locust processes", 0.0) / wall
            server = sum(value for kind, value in cpu["cpu_s"].items() if kind.startswith("server")) / wall
            lag = " / ".join(_s(probe[key]) for key in ("lag_p50_s", "lag_p99_s", "lag_max_s"))
            holds = "yes" if probe["held"] else "no: " + "; ".join(probe["why_not"])
            lines.append(
                f"| {probe['population']:,} | {probe['offered_per_s']:,.0f} | {probe['achieved_per_s']:,.0f} | {lag} "
                f"| {_s(probe['freshness_p99_s'], 1)} | {_count(probe['lost'])} | {client:.2f} | {server:.2f} "
                f"| {holds} |"
            )
        lines.append("")
    return "\n".join(lines)


def render_chart(document: dict, path: Path) -> None:
    """A PNG of two panels: achieved vs offered events/s (the diagonal is keeping up), and p99 lag vs population."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import StrMethodFormatter

    figure = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    rates, lags = figure.subplots(1, 2)
    top = 1.0
    for strategy, row in document["strategies"].items():
        probes = sorted(row["probes"], key=lambda probe: probe["population"])
        offered = [probe["offered_per_s"] for probe in probes]
        (line,) = rates.plot(offered, [probe["achieved_per_s"] for probe in probes], marker="o", label=strategy)
        lags.plot(
            [probe["population"] for probe in probes],
            [max(probe["lag_p99_s"] or 0.0, 1e-3) for probe in probes],
            marker="o",
            color=line.get_color(),
            label=f"{strategy}: serves {row['served']:,}",
        )
        top = max(top, *offered)
    rates.plot([0, top], [0, top], color="gray", linestyle=":", label="achieved = offered")
    rates.set_xlabel("offered events/s (population x events/day / 86,400)")
    rates.set_ylabel("achieved events/s")
    rates.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    rates.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    rates.grid(alpha=0.3)
    rates.legend()
    lags.axhline(document["settings"]["lag_bound_s"], color="gray", linestyle=":", label="lag bound")
    lags.set_xscale("log")
    lags.set_yscale("log")
    lags.set_xlabel("population (engineers)")
    lags.set_ylabel("p99 lag behind schedule, s")
    lags.grid(alpha=0.3)
    lags.legend()
    settings = document["settings"]
    figure.suptitle(
        f"firehose capacity: {settings['events_per_engineer_day']:,g} events/engineer/day ({settings['day_shape']}), "
        f"{document['machine'].get('cores', '?')} cores, {settings['duration']} per probe"
    )
    figure.tight_layout()
    figure.savefig(path)


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
