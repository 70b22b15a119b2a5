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
        key = args.api_key_file.read_text().strip()
    else:
        key = os.environ.get("VOCWATCH_API_KEY") or "sim-key"
    faults = Faults(
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        latency_s=args.latency,
        job_fail_rate=args.job_fail_rate,
    )
    state = SimState(
        api_key=key,
        tenant=args.tenant,
        complete_after_s=args.complete_after,
        faults=faults,
        sink=args.sink,
        seed=args.seed,
    )
    if args.unauthorized_for:
        state.unauthorized_for(args.unauthorized_for)
    sim = Simulator(state, args.host, args.port)
    print(json.dumps({"event": "simulate.listening", "url": sim.url, "tenant": args.tenant}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sim.serve_forever()
    return 0
