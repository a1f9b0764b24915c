"""Checks that set a run's exit code, for CI: `--check "rows_per_s >= 15000"`, `--baseline REF --max-regression 10%`.

Each check is one line with its figure and verdict (printed after the summary, kept in the summary JSON's
"checks", and one JUnit test case with `--junit FILE`). `lost == 0` is always checked. A baseline check compares
rows/s with stored runs (firehose.report.store): with a spread (several runs under one label, `--repeat`) the run
fails only when it is more than the allowed regression below the baseline's slowest run, else below its one run.
Names and expressions are checked before a run starts (firehose.report.figures.unknown_figure): a typo is a
refusal (exit 2), not a check that silently never fails.
"""

from __future__ import annotations

import operator
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from firehose.report.figures import Spread, figures, higher_is_better, unknown_figure

OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_EXPRESSION = re.compile(r"^\s*([A-Za-z0-9_\[\]]+)\s*(>=|<=|==|>|<)\s*([-+]?[0-9][0-9_,]*(?:\.[0-9]*)?)\s*$")
ALWAYS = "lost == 0"
"""Checked on every run with checks: a run that loses rows passes no CI."""
BASELINE_FIGURE = "rows_per_s"
"""What --baseline compares: the run's rate, the one figure every strategy has."""


@dataclass(frozen=True)
class Check:
    """`figure OP threshold`, as the user wrote it."""

    text: str
    figure: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Check:
        """The check `text` states; ValueError with the reason when it is not one (or names no figure)."""
        match = _EXPRESSION.match(text)
        if match is None:
            raise ValueError(f'--check "{text}": write FIGURE OP NUMBER, e.g. "rows_per_s >= 15000" (OP: >= <= > < ==)')
        name, op, number = match.groups()
        if (reason := unknown_figure(name)) is not None:
            raise ValueError(f'--check "{text}": {reason}')
        return cls(text.strip(), name, op, float(number.replace(",", "").replace("_", "")))

    def judge(self, found: dict[str, float]) -> dict:
        value = found.get(self.figure)
        passed = value is not None and OPERATORS[self.op](value, self.threshold)
        shown = "no value (nothing measured it in this run)" if value is None else _number(value)
        return _result(
            self.text,
            self.figure,
            value,
            passed,
            f"{self.figure} = {shown}, wanted {self.op} {_number(self.threshold)}",
        )


def parse_regression(text: str) -> float:
    """--max-regression "10%" (or "10") as the fraction 0.1; ValueError unless 0 <= it < 100 %."""
    number = text.strip().removesuffix("%").strip()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"--max-regression {text}: give a percentage, e.g. 10%") from None
    if not 0 <= value < 100:
        raise ValueError(f"--max-regression {text}: give a percentage from 0 up to 100, e.g. 10%")
    return value / 100


def judge_baseline(found: dict[str, float], ref: str, baseline: list[dict], regression: float) -> dict:
    """The run's rows/s against the baseline runs' (their summaries): at most `regression` worse than the
    baseline's median, or than its slowest run when it has a spread."""
    figure = BASELINE_FIGURE
    spread = Spread.of([figures(summary)[figure] for summary in baseline])
    value = found.get(figure)
    higher = higher_is_better(figure)
    edge = (spread.low if higher else spread.high) if spread.runs > 1 else spread.median
    limit = edge * (1 - regression) if higher else edge * (1 + regression)
    passed = value is not None and (value >= limit if higher else value <= limit)
    of = f"{spread.runs} runs, median {_number(spread.median)} [{_number(spread.low)}-{_number(spread.high)}]"
    base = f"its {'slowest' if higher else 'worst'} run" if spread.runs > 1 else "it"
    sign = ">=" if higher else "<="
    detail = (
        f"{figure} = {'no value' if value is None else _number(value)}, wanted {sign} {_number(limit)} "
        f"(baseline {ref}: {of}; at most {regression:.0%} worse than {base})"
    )
    return _result(f"{figure} vs baseline {ref} (max regression {regression:.0%})", figure, value, passed, detail)


def _result(name: str, figure: str, value: float | None, passed: bool, detail: str) -> dict:
    verdict = "PASS" if passed else "FAIL"
    return {
        "check": name,
        "figure": figure,
        "value": value,
        "passed": passed,
        "line": f"check {verdict}: {name}: {detail}",
    }


def judge_all(summary: dict, checks: list[Check], baseline: tuple[str, list[dict], float] | None) -> list[dict]:
    """Every check's result on `summary`: `lost == 0` first, then the user's, then the baseline's."""
    found = figures(summary)
    results = [check.judge(found) for check in (Check.parse(ALWAYS), *checks)]
    if baseline is not None:
        results.append(judge_baseline(found, *baseline))
    return results


def write_junit(path: str | Path, results: list[dict], run_name: str) -> None:
    """One JUnit test case per check, a failed check as its `<failure>`: what CI systems read."""
    suite = ET.Element(
        "testsuite",
        name="firehose checks",
        tests=str(len(results)),
        failures=str(sum(not result["passed"] for result in results)),
    )
    for result in results:
        case = ET.SubElement(suite, "testcase", classname=f"firehose.{run_name}", name=result["check"])
        if result["passed"]:
            ET.SubElement(case, "system-out").text = result["line"]
        else:
            ET.SubElement(case, "failure", message=result["line"]).text = result["line"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites", name="firehose")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
