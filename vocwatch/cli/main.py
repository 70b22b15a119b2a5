"""The ``vocwatch`` command line: run, upload, ledger, simulate, demo, check, status, setup."""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from vocwatch import __version__
from vocwatch.cli.common import EX_CONFIG, EX_USAGE, quiet_broken_pipe
from vocwatch.core.states import State

Handler = Callable[[argparse.Namespace], int]
# command -> the module under vocwatch.cli whose ``main(args)`` runs it
COMMANDS = {
    "run": "run",
    "upload": "upload",
    "ledger": "ledger",
    "simulate": "simulate",
    "demo": "demo",
    "check": "check",
    "status": "status",
    "setup": "setup",
}
CONFIG_HELP = "TOML config file (default: $VOCWATCH_CONFIG)"
VERSION_HELP = "print vocwatch's version and exit"
STATES = ", ".join(State)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE, which the unit never restarts on), not 2; off a
    terminal it is one JSON line (``usage.invalid``), like every other line vocwatch writes."""

    def error(self, message: str) -> NoReturn:
        from vocwatch.edges.logs import is_terminal, report

        if is_terminal(sys.stderr):
            self.print_usage(sys.stderr)
            self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")
        report("usage.invalid", f"{self.prog}: {message} (see {self.prog} --help)")
        self.exit(EX_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vocwatch",
        description="Deliver call recordings from a watched folder to Crescendo's Voice-of-Customer API.",
    )
    parser.add_argument("--version", action="version", version=f"vocwatch {__version__}", help=VERSION_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--version", action="version", version=f"vocwatch {__version__}", help=VERSION_HELP)
        if config:
            p.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
        return p

    command("run", "Run the daemon in the foreground until SIGTERM or SIGINT.")
    up = command(
        "upload",
        "Upload the given recordings or folders once (a backfill), then exit. Each pair sent moves into done/ "
        "(or failed/ with its reason), as the daemon moves what it takes from the inbox; --keep-sources leaves "
        "the sources where they are.",
    )
    up.add_argument(
        "paths", nargs="+", type=Path, metavar="FILE_OR_DIR", help="recordings (with their sidecars) or folders"
    )
    up.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    up.add_argument(
        "--keep-sources",
        action="store_true",
        help="leave the given files where they are: done/ and failed/ get a hard link of each (a copy when "
        "it lies on another file system)",
    )

    ledger = command("ledger", "Query the ledger of uploads.", config=False)
    lsub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    export = lsub.add_parser("export", help="Print every ledger row as JSON lines or CSV.")
    export.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    export.add_argument("--host", metavar="INSTANCE", help="only rows of this host (instance), in a fleet ledger")
    lst = lsub.add_parser("list", help="List ledger rows: a table on a terminal, JSON lines otherwise.")
    lst.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    lst.add_argument(
        "--state", choices=[str(s) for s in State], metavar="STATE", help=f"only rows in this state: {STATES}"
    )
    lst.add_argument("--since", metavar="DURATION", help="only rows changed within DURATION (e.g. 90s, 15m, 2h, 7d)")
    lst.add_argument("--recording", metavar="ID", help="only this recording id")
    lst.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    lst.add_argument("--host", metavar="INSTANCE", help="only rows of this host (instance), in a fleet ledger")
    rep = lsub.add_parser(
        "report", help="Recordings, minutes of audio, bytes and failures by reason: a table on a terminal, JSON lines."
    )
    rep.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    rep.add_argument("--since", metavar="DURATION", default="30d", help="rows created within DURATION (default 30d)")
    rep.add_argument("--by", choices=("day", "host", "state"), help="one line per day (UTC), host or state")
    rep.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    show = lsub.add_parser("show", help="Show one recording (by recording id or job id) with its history.")
    show.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    show.add_argument("ident", metavar="ID", help="a recording id (metadata.id) or a job id")
    show.add_argument("--host", metavar="INSTANCE", help="only rows of this host (instance), in a fleet ledger")
    migrate = lsub.add_parser(
        "migrate", help="Copy this host's SQLite ledger into the fleet ledger (PostgreSQL); safe to run twice."
    )
    migrate.add_argument("--config", type=Path, metavar="PATH", help=CONFIG_HELP)
    migrate.add_argument("--to", required=True, metavar="URL", help="the fleet ledger, postgresql://USER@HOST/DB")

    sim = command("simulate", "Serve a Crescendo-compatible VOC API on loopback (for demos and tests).", config=False)
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    sim.add_argument("--tenant", default="tenant-alpha", help="the one tenant id it serves (default tenant-alpha)")
    sim.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the key the simulator accepts (default: $VOCWATCH_API_KEY, else 'sim-key')",
    )
    sim.add_argument(
        "--complete-after",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds before a job moves from started to completed",
    )
    sim.add_argument("--error-rate", type=float, default=0.0, help="share of uploads answered with --error-status")
    sim.add_argument("--error-status", type=int, default=503, help="HTTP status of injected errors (default 503)")
    sim.add_argument(
        "--fail-first", type=int, default=0, metavar="N", help="answer the first N uploads with --error-status"
    )
    sim.add_argument("--retry-after", help="Retry-After header sent with injected errors (seconds or HTTP date)")
    sim.add_argument("--drop-rate", type=float, default=0.0, help="share of uploads whose connection is dropped")
    sim.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay before each upload reply")
    sim.add_argument(
        "--unauthorized-for",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 401 to everything for this long after start",
    )
    sim.add_argument("--job-fail-rate", type=float, default=0.0, help="share of jobs that end 'failed'")
    sim.add_argument("--sink", action="store_true", help="accept every upload without parsing it (benchmarks)")
    sim.add_argument("--seed", type=int, help="random seed for the injected faults")
    sim.add_argument(
        "--access-log", action="store_true", help="log one JSON line per request on stderr (method, path, status)"
    )

    demo = command("demo", "Show the whole job offline: simulator, inbox, daemon, summary.", config=False)
    demo.add_argument("--dir", type=Path, help="where to put the demo's folders (default: a new temp folder)")

    check = command("check", "Check the config, folders, ledger and key; --online also asks the API.")
    check.add_argument("--online", action="store_true", help="also check /health and that the key is accepted")
    check.add_argument("--reasons", action="store_true", help="explain every reason a recording lands in failed/")

    status = command("status", "Print one job's status from the API.")
    status.add_argument("job_id", metavar="JOB_ID", help="a job id, as the upload's 202 and the ledger give it")

    setup = command(
        "setup",
        "Set up the installed service (as root): the tenant into the config, the API key into a root-only file, "
        "then check --online.",
        config=False,
    )
    setup.add_argument("--tenant", metavar="ID", help="the Crescendo tenant id (default: asked for on a terminal)")
    setup.add_argument("--base-url", metavar="URL", help="the API's base URL (default: keep the config's)")
    setup.add_argument(
        "--key-file", metavar="PATH", help="read the API key from PATH, '-' for stdin (default: asked for, not echoed)"
    )
    setup.add_argument(
        "--config", type=Path, metavar="PATH", help="the config to edit (default: /etc/vocwatch/config.toml)"
    )
    setup.add_argument(
        "--key-path",
        type=Path,
        metavar="PATH",
        help="where to write the key (default: /etc/vocwatch/api-key, which the unit's LoadCredential= reads)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, freeze: bool = False) -> int:
    """Run one command; its exit status. A reader that goes away (``| head``) ends it quietly (141).

    ``freeze`` (the console script's: the process is this command's alone): what the imports built is
    moved out of the cyclic garbage collector's sight (``gc.freeze``), never to be scanned again.
    """
    return quiet_broken_pipe(lambda: _run(argv, freeze=freeze))


# Optional to every library that tries them, in none of vocwatch's dependencies, but in a developer's venv
# (the dev extra): structlog.dev and structlog.tracebacks load rich for tracebacks, httpx its command line
# (click, rich, pygments). About 45 ms of `vocwatch run`'s start-up that the daemon never uses.
OPTIONAL_EXTRAS = ("rich", "click", "pygments")


@contextlib.contextmanager
def _extras_hidden(names: tuple[str, ...] = OPTIONAL_EXTRAS) -> Iterator[None]:
    """Within: ``import rich`` (and the others) raises ImportError, as in a deployed venv, so the library's
    ``try: import rich`` takes its fallback; afterwards they import again. ``sys.modules[name] = None`` is
    Python's own mark for "not importable"; a module already imported is left as it is."""
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in marked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


@contextlib.contextmanager
def _collector_paused(*, freeze: bool) -> Iterator[None]:
    """Python's cyclic garbage collector off while a command's modules load: some 130 collections (tens of
    milliseconds of `vocwatch run`'s start-up) that find next to nothing, the heap only growing; then on
    again, frozen first if asked (else its first collection would scan the whole import-built heap as young
    objects)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if freeze:
                gc.freeze()
            gc.enable()


def _run(argv: Sequence[str] | None, *, freeze: bool = False) -> int:
    args = _parser().parse_args(argv)
    with _collector_paused(freeze=freeze), _extras_hidden():
        # One module per command, imported only when it runs: `vocwatch run` loads no simulator, no
        # progress bar, no PostgreSQL driver (unless ledger.url names one), no tomlkit.
        command = importlib.import_module(f"vocwatch.cli.{COMMANDS[args.command]}")
        from vocwatch.edges.config import ConfigError
        from vocwatch.edges.ledger import LedgerError
        from vocwatch.edges.ledgers import PgLedgerError
        from vocwatch.edges.logs import report
    handler: Handler = command.main
    try:
        return handler(args)
    except ConfigError as exc:
        # Off a terminal (journald, a pipe) one JSON line per bad key, like every other line vocwatch writes.
        for problem in exc.problems:
            report("config.invalid", problem, human=f"config error: {problem}")
        return EX_CONFIG
    except (LedgerError, PgLedgerError) as exc:
        # Not a restart's to fix (the unit's RestartPreventExitStatus=78): an operator must act on the file.
        report("ledger.unusable", str(exc))
        return os.EX_CONFIG
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # the shell's convention for a command ended by ^C


def entry() -> None:
    sys.exit(main(freeze=True))


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    entry()
