"""``vocwatch simulate``: a Crescendo-compatible API on loopback, for demos, tests and staging."""

from __future__ import annotations

import argparse
import contextlib
import json
import os

from vocwatch.cli.common import EX_UNAVAILABLE, load_testing


def main(args: argparse.Namespace) -> int:
    sim_module = load_testing("simulator", "simulate")
    if sim_module is None:
        return EX_UNAVAILABLE
    Faults, SimState, Simulator = sim_module.Faults, sim_module.SimState, sim_module.Simulator  # noqa: N806
    if args.api_key_file:
        key, source = args.api_key_file.read_text().strip(), str(args.api_key_file)
    elif os.environ.get("VOCWATCH_API_KEY"):
        key, source = os.environ["VOCWATCH_API_KEY"], "$VOCWATCH_API_KEY"
    else:
        key, source = "sim-key", "the default"
    faults = Faults(
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        latency_s=args.latency,
        job_fail_rate=args.job_fail_rate,
        fail_first=args.fail_first,
    )
    state = SimState(
        api_key=key,
        tenant=args.tenant,
        complete_after_s=args.complete_after,
        faults=faults,
        sink=args.sink,
        seed=args.seed,
        access_log=args.access_log,
    )
    if args.unauthorized_for:
        state.unauthorized_for(args.unauthorized_for)
    sim = Simulator(state, args.host, args.port)
    # A stand-in's key is a test key, not a secret: whoever points a vocwatch at it needs to know which it is.
    listening = {"event": "simulate.listening", "url": sim.url, "tenant": args.tenant}
    with contextlib.suppress(KeyboardInterrupt):  # ^C as soon as it says it listens is a clean stop too
        print(json.dumps({**listening, "api_key": key, "api_key_from": source}), flush=True)
        sim.serve_forever()
    return 0
