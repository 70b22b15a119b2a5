"""``vocwatch run``: the daemon in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from vocwatch.cli.common import settings_from
from vocwatch.edges.notify import from_environment
from vocwatch.runtime.daemon import Daemon


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    daemon = Daemon(settings, notifier=from_environment())
    daemon.install_signal_handlers()
    return daemon.run()
