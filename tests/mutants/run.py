"""Hold the suite to the faults of tests/mutants/: each patch applied to a scratch copy, the suite run until it fails.

For each `NN-name.patch` (its first line says the fault in words): copy the tree (without .git, .venv and caches)
to a scratch directory, apply the patch there (`git apply`), and run `python -m pytest -x` in it with the project's
venv, PYTHONPATH set to the copy: the venv's editable install points at the original tree, and the copy must be
what the tests and the Locust subprocesses they start import (checked before the suite runs). Records the time to
the first failure and the failing test, or SURVIVED when the suite passed; a patch that no longer applies is STALE,
never counted as killed. A failing test kills the mutant only if it fails again alone and passes alone without the
patch: a timing test that fails on a loaded machine is left out and the suite run again. Prints a table; exits 1
if any mutant survived, was stale or could not be judged.
Scratch copies are always removed.

    python tests/mutants/run.py [--only 03-writer-drops-batch-overflow,06] [--source TREE] [--python VENV_PYTHON]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGES = ("firehose", "services", "telemetry", "users", "writers")
"""The project's top-level packages: each must be imported from the scratch copy, not the original."""
NOT_COPIED = (".git", ".venv", "results", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
              ".hypothesis", ".import_linter_cache")  # fmt: skip
SELF_TEST = "tests/test_mutants.py"
RECHECK_TIMEOUT_S = 900
"""Bound on re-running one failing test alone, with and without the patch."""
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)
"""A failing test in pytest's short summary: its id (parameters may hold spaces), then " - " and the error."""
_PASSED = re.compile(r"^PASSED (.+)$", re.MULTILINE)


@dataclass
class Outcome:
    """What the suite did with one mutant."""

    name: str
    fault: str
    verdict: str  # killed, SURVIVED, STALE, TIMEOUT, ERROR
    seconds: float | None = None
    failing_test: str = ""


def mutants(folder: Path, only: list[str]) -> list[Path]:
    """The patches of `folder` in name order; with `only`, those whose name or number is listed."""
    patches = sorted(folder.glob("*.patch"))
    if not only:
        return patches
    picked = [patch for patch in patches if patch.stem in only or patch.stem.split("-", 1)[0] in only]
    if unknown := set(only) - {patch.stem for patch in picked} - {patch.stem.split("-", 1)[0] for patch in picked}:
        raise SystemExit(f"no such mutant in {folder}: {', '.join(sorted(unknown))}")
    return picked


def fault_of(patch: Path) -> str:
    """The patch's first line: the fault in words."""
    return patch.read_text().splitlines()[0].strip()


def run_one(
    patch: Path, source: Path, python: Path, timeout: float, log_dir: Path | None, pytest_args: tuple[str, ...] = ()
) -> Outcome:
    """Apply `patch` to a scratch copy of `source`, run the suite there until a failure the fault causes."""
    outcome = Outcome(patch.stem, fault_of(patch), "ERROR")
    scratch = Path(tempfile.mkdtemp(prefix=f"firehose-mutant-{patch.stem[:2]}-"))
    try:
        tree = scratch / "tree"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(*NOT_COPIED), symlinks=True)
        applied = _git_apply(patch, tree)
        if applied.returncode != 0:
            outcome.verdict, outcome.failing_test = "STALE", applied.stderr.strip().splitlines()[0]
            return outcome
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        if problem := _imported_elsewhere(python, tree, env):
            outcome.failing_test = problem
            return outcome
        _suite_until_the_fault_fails_it(patch, tree, python, env, timeout, outcome, log_dir, pytest_args)
        return outcome
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _suite_until_the_fault_fails_it(
    patch: Path,
    tree: Path,
    python: Path,
    env: dict[str, str],
    timeout: float,
    outcome: Outcome,
    log_dir: Path | None,
    pytest_args: tuple[str, ...] | list[str],
) -> None:
    """Run the suite (`pytest -x`) until a failure is the fault's.

    A failing test is the fault's only if it fails again alone with the patch and passes alone without it: on a
    loaded machine a timing test may fail for no fault of the patch, and must not count as a kill. Such a test is
    named in the outcome, and the suite goes on without it and without the tests that passed already.
    `outcome.seconds` is the suite's time to the kill, the re-runs of single tests not counted.
    """
    # tests/test_mutants.py checks that each patch applies to an unpatched tree: not a test of the product
    # -rA: the short summary names every test that passed, so a run after an unreliable failure skips them
    suite = [
        str(python),
        "-m",
        "pytest",
        "-x",
        "-q",
        "-rA",
        "-p",
        "no:cacheprovider",
        f"--ignore={SELF_TEST}",
        *pytest_args,
    ]
    unreliable: list[str] = []
    passed: list[str] = []
    outcome.seconds, deadline = 0.0, time.monotonic() + timeout
    while True:
        started = time.monotonic()
        command = [*suite, *(f"--deselect={test_id}" for test_id in [*passed, *unreliable])]
        output, returncode = _run_bounded(command, tree, env, max(deadline - started, 1))
        outcome.seconds += time.monotonic() - started
        summary = output.rpartition(" short test summary info ")[2]  # not the captured logs' "ERROR ..." lines
        passed += _PASSED.findall(summary)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            with (log_dir / f"{patch.stem}.log").open("a") as log:
                log.write(output)
        failed = _FAILED.search(summary)
        if returncode is None:
            outcome.verdict = "TIMEOUT"
        elif returncode == 0:
            outcome.verdict = "SURVIVED"
        elif failed is None:
            outcome.failing_test = f"pytest exit code {returncode}, no failing test named"
        elif _the_faults_failure(patch, failed.group(1), tree, python, env):
            outcome.verdict, outcome.failing_test = "killed", failed.group(1)
        else:
            unreliable.append(failed.group(1))
            continue
        if unreliable:
            outcome.failing_test += f" (failed without the fault, left out: {', '.join(unreliable)})"
        return


def _fails_alone(test_id: str, tree: Path, python: Path, env: dict[str, str]) -> bool:
    """Whether the test fails when run alone in `tree`."""
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id]
    _, returncode = _run_bounded(command, tree, env, RECHECK_TIMEOUT_S)
    return returncode == 1  # 1: tests failed (not 4 or 5: no such test)


def _the_faults_failure(patch: Path, test_id: str, tree: Path, python: Path, env: dict[str, str]) -> bool:
    """Whether the test fails alone with the patch and passes alone without it (the patch is put back after)."""
    if not _fails_alone(test_id, tree, python, env):
        return False
    _git_apply(patch, tree, "--reverse").check_returncode()
    try:
        return not _fails_alone(test_id, tree, python, env)
    finally:
        _git_apply(patch, tree).check_returncode()


def _git_apply(patch: Path, tree: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "apply", *flags, str(patch)], cwd=tree, capture_output=True, text=True)


def _imported_elsewhere(python: Path, tree: Path, env: dict[str, str]) -> str | None:
    """None if every package of the project imports from `tree` with this environment, else what does not."""
    probe = f"import {', '.join(PACKAGES)}; print('\\n'.join(m.__file__ for m in ({', '.join(PACKAGES)})))"
    found = subprocess.run([str(python), "-c", probe], cwd=tree, env=env, capture_output=True, text=True)
    if found.returncode != 0:
        return f"the packages do not import: {found.stderr.strip().splitlines()[-1:]}"
    elsewhere = [path for path in found.stdout.split() if not Path(path).resolve().is_relative_to(tree.resolve())]
    return f"imported from outside the scratch copy: {', '.join(elsewhere)}" if elsewhere else None


def _run_bounded(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[str, int | None]:
    """The command's output and exit code (None if it outlived `timeout`); its whole process group killed after."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            returncode: int | None = process.wait(timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # also on Ctrl-C: Locust runs and servers the suite started must not outlive it
            with suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            _kill_leftovers(env["PYTHONPATH"])
        output.seek(0)
        return output.read(), returncode


def _kill_leftovers(tree: str) -> None:
    """Kill what the suite started in a session of its own (pg_ctl's PostgreSQL), found by the PYTHONPATH it
    inherited: after a suite cut short, its session fixtures never stopped them."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"\0PYTHONPATH={tree}\0".encode() in b"\0" + environ.read_bytes():
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue


def table(outcomes: list[Outcome]) -> str:
    """The results as a Markdown table."""
    lines = ["| mutant | verdict | to first failure | failing test |", "|---|---|---|---|"]
    for outcome in outcomes:
        seconds = "" if outcome.seconds is None else f"{outcome.seconds:.0f} s"
        lines.append(f"| {outcome.name} | {outcome.verdict} | {seconds} | {outcome.failing_test} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="Comma-separated mutant names or numbers (default: all).")
    parser.add_argument("--source", type=Path, default=REPO, help="The tree to copy (default: this one).")
    parser.add_argument("--patches", type=Path, default=HERE, help="The folder of NN-name.patch files.")
    parser.add_argument(
        "--python", type=Path, default=None, help="The venv's python (default: SOURCE/.venv/bin/python)."
    )
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds one mutant's suite may take.")
    parser.add_argument("--log-dir", type=Path, default=None, help="Keep each mutant's pytest output here.")
    parser.add_argument(
        "--pytest-arg", action="append", default=[], help="An argument added to the suite's pytest (repeatable)."
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (scratch copies, processes) as on Ctrl-C
    source = args.source.resolve()
    python = args.python or source / ".venv" / "bin" / "python"  # not resolved: the venv's own path
    outcomes = []
    for patch in mutants(args.patches, [name for name in args.only.split(",") if name]):
        print(f"{patch.stem}: {fault_of(patch)}", flush=True)
        outcome = run_one(patch, source, python, args.timeout, args.log_dir, args.pytest_arg)
        seconds = "" if outcome.seconds is None else f" after {outcome.seconds:.0f} s"
        print(f"  {outcome.verdict}{seconds} {outcome.failing_test}", flush=True)
        outcomes.append(outcome)
    print(table(outcomes))
    return 0 if all(outcome.verdict == "killed" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
