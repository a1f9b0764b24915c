"""`firehose bench`'s sizes: --quick's are defaults, and a size given with it wins (no figure is measured here)."""

import argparse

from firehose.tools.bench.main import QUICK_SIZES, SIZES, add_arguments, apply_sizes


def _parsed(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = parser.parse_args(list(args))
    apply_sizes(parsed)
    return parsed


def test_quick_fills_only_the_sizes_not_given():
    args = _parsed("--quick", "--repetitions", "2", "--strategy-duration", "5s")
    assert (args.repetitions, args.strategy_duration) == (2, "5s")
    assert (args.engineers, args.strategy_users) == (QUICK_SIZES["engineers"], QUICK_SIZES["strategy_users"])


def test_without_quick_the_full_sizes_apply_unless_given():
    args = _parsed("--engineers", "7")
    assert args.engineers == 7
    assert {name: getattr(args, name) for name in SIZES if name != "engineers"} == {
        name: value for name, value in SIZES.items() if name != "engineers"
    }
