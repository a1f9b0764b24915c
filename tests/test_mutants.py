"""The named faults of tests/mutants/ stay applicable, and the runner tells a stale patch from a killed mutant.

Whether the suite kills each fault is `make mutants` (it runs the whole suite once per fault); here only what keeps
that target honest: every patch still applies to this tree, says its fault in words, and the runner never counts
a patch that no longer applies as killed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.mutants.run import HERE, REPO, fault_of, mutants, run_one


def test_twelve_faults_each_applies_to_this_tree_and_says_what_it_breaks():
    patches = mutants(HERE, [])
    assert len(patches) == 12
    for patch in patches:
        check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=REPO, capture_output=True, text=True)
        assert check.returncode == 0, f"{patch.name} no longer applies (re-make it from its first line): {check.stderr}"
        assert fault_of(patch) and not fault_of(patch).startswith(("---", "diff")), patch.name


def test_mutants_are_picked_by_number_or_name():
    first, *_ = mutants(HERE, [])
    assert mutants(HERE, [first.stem.split("-", 1)[0]]) == mutants(HERE, [first.stem]) == [first]
    with pytest.raises(SystemExit, match="no such mutant"):
        mutants(HERE, ["99"])


def test_a_patch_that_no_longer_applies_is_stale_not_killed(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "module.py").write_text("VALUE = 1\n")
    patch = tmp_path / "01-moved-code.patch"
    patch.write_text(
        "A fault in code that has moved.\n\n--- a/module.py\n+++ b/module.py\n@@ -1 +1 @@\n-VALUE = 2\n+VALUE = 3\n"
    )
    outcome = run_one(patch, tree, Path(sys.executable), timeout=60, log_dir=None)
    assert outcome.verdict == "STALE" and outcome.seconds is None
    assert (tree / "module.py").read_text() == "VALUE = 1\n"  # the source is never touched
