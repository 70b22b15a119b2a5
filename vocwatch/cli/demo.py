"""``vocwatch demo``: the whole job offline: simulator, inbox, daemon, summary."""

from __future__ import annotations

import argparse

from vocwatch.cli.common import EX_UNAVAILABLE, load_testing


def main(args: argparse.Namespace) -> int:
    demo = load_testing("demo", "demo")
    if demo is None:
        return EX_UNAVAILABLE
    result: int = demo.run_demo(args.dir)
    return result
