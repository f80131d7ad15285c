"""Send the example fraud model live traffic, clean or drifted, and print what it answers.

    python -m examples.quickstart.traffic --url http://127.0.0.1:8080/predictions/fraud [--drift] [--seconds 900]

The rows come from the example's generator (examples/fraud/generator.py). `--drift` sends the
drift of `make demo`: amounts arrive in cents and distances in metres (an upstream unit change).
The generator's labels only measure the accuracy printed here; they are never sent. Every
`--every` seconds it prints one line (requests, failed, accuracy over that interval, the adapter
versions that answered); on Ctrl-C (or SIGTERM, or after `--seconds`) it prints a JSON summary.
Loopback URLs only (e.g. through `kubectl port-forward`).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from examples.fraud.generator import World, labelled_rows
from sandbox.loadgen import LoadLoop

DRIFTED = World(amount_unit=100.0, distance_unit=1000.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.quickstart.traffic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/predictions/fraud")
    parser.add_argument("--drift", action="store_true", help="amounts in cents, distances in metres")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    loop = LoadLoop(args.url, labelled_rows(DRIFTED if args.drift else World(), args.seed),
                    clients=args.clients, max_seconds=args.seconds).start()
    started = time.monotonic()
    print(f"sending {'drifted' if args.drift else 'clean'} traffic to {args.url}", flush=True)
    try:
        while not stop.wait(args.every):
            window = loop.summary(loop.window(args.every))
            accuracy = "-" if window["accuracy"] is None else f"{window['accuracy']:.3f}"
            print(f"t={time.monotonic() - started:5.0f}s  requests={window['requests']:5d}  failed={window['failed']:3d}"
                  f"  accuracy={accuracy}  adapters={','.join(window['adapters']) or '-'}", flush=True)
            if time.monotonic() - started >= args.seconds:
                break
    finally:
        loop.stop()
    print(json.dumps({"summary": loop.summary(), "last_30s": loop.summary(loop.window(30))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
