"""`make bench-cluster`: chatd on the local cluster, with 1 and 2 api processes and 1 and 2 workers.

    python -m bench.scale_out [--shapes 1x1,2x1,1x2,2x2] [--seconds 30] [--output bench/results-cluster.md]

Run with the cluster's test URLs in the environment (the Makefile target sets them from
`services.sh cluster test-env`): the real set's namespace is then made on the cluster. Each shape
(``APISxWORKERS``) is make bench's end-to-end phase (c): wrk -c64 posting messages for --seconds,
then until search finds every message; the api processes of a shape share one port
(``CHATD_REUSE_PORT``), so the kernel spreads wrk's connections over them. Before each shape the
ceiling (the trivial aiohttp handler, bench/ceiling.py) takes one wrk round of the same length,
so each shape's rate is also given as a ratio to a ceiling measured next to it.

Besides the rates, where the CPU went, per 1,000 messages: the api processes, the workers, and
each server of the cluster summed over its nodes (bench/procstat.py's cluster_pids), which is
what the README's capacity model ("Scaling out") is built from. On two cores every shape shares
the same two cores with 11 server processes and wrk: the figures say what each component costs,
not what more machines would add.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, phases, report
from bench.deploy import Ceiling
from bench.loadgen import WrkResult
from bench.phases import EndToEnd
from bench.procstat import cluster_pids

logger = logging.getLogger("bench")
HERE = Path(__file__).parent
# Where each process's CPU is counted in the table: its kind (api, worker, a server's name).
KINDS = ("api", "worker", "MariaDB", "Redis", "RabbitMQ", "Elasticsearch")


@dataclass
class Shape:
    apis: int
    workers: int
    ceiling: WrkResult
    run: EndToEnd

    @property
    def label(self) -> str:
        return f"{self.apis} api, {self.workers} worker{'s' if self.workers > 1 else ''}"

    def cpu_per_thousand(self) -> dict[str, float]:
        """CPU seconds per 1,000 messages, per kind of process (servers summed over their nodes)."""
        per_kind: dict[str, float] = defaultdict(float)
        for name, seconds in self.run.cpu_s.items():
            per_kind[name.split(" ")[0]] += seconds
        return {kind: 1000 * per_kind[kind] / self.run.messages for kind in KINDS} if self.run.messages else {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x1,2x1,1x2,2x2", help="APISxWORKERS, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="wrk's load per shape")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--output", type=Path, default=HERE / "results-cluster.md")
    return parser.parse_args(argv)


async def measure(shapes: list[tuple[int, int]], options: phases.Options, folder: Path) -> list[Shape]:
    ceiling = await Ceiling(folder).start()
    results = []
    try:
        for apis, workers in shapes:
            token = "ceiling"  # the ceiling answers any token
            logger.info("ceiling: one %g s round", options.e2e_s)
            on_ceiling = await loadgen.wrk(
                ceiling.url,
                token,
                options.chats,
                phases.WORD,
                seconds=options.e2e_s,
                connections=options.connections,
                threads=options.threads,
            )
            logger.info("%d api, %d worker(s): %g s of load, then until searchable", apis, workers, options.e2e_s)
            _, run = await phases.end_to_end(
                "real", ceiling, options, folder, workers, with_ab=False, apis=apis, servers=cluster_pids
            )
            results.append(Shape(apis, workers, on_ceiling, run))
            logger.info("%s msg/s stored and searchable", report.rate(run.messages_per_s))
    finally:
        ceiling.stop()
    return results


def markdown(shapes: list[Shape], how: str, started: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    rows = []
    for shape in shapes:
        run = shape.run
        rows.append(
            [
                shape.label,
                report.rate(run.load.ok_per_s),
                report.rate(run.messages_per_s),
                report.rate(shape.ceiling.ok_per_s),
                report.ratio((run.messages_per_s or 0) / shape.ceiling.ok_per_s),
                f"{run.load.p99_ms:.0f}",
                "-" if run.lag_p99_s is None else f"{run.lag_p99_s:.2f}",
            ]
        )
    rates = report.table(
        [
            "shape",
            "accepted 2xx/s",
            "stored + searchable msg/s",
            "ceiling 2xx/s",
            "searchable / ceiling",
            "p99 ms (201)",
            "lag p99 s",
        ],
        rows,
    )
    cpu_rows = [[shape.label, *(f"{v:.2f}" for v in shape.cpu_per_thousand().values())] for shape in shapes]
    cpu = report.table(["shape", *(f"{kind} CPU s / 1k msg" for kind in KINDS)], cpu_rows)
    return (
        f"Measured with `{how}` on {when}: {report.machine()}; chatd {report.revision()}. The cluster of"
        " `make cluster` (3 RabbitMQ, Redis + 2 replicas + 3 Sentinels, 3 Elasticsearch, MariaDB primary +"
        " semi-synchronous replica) on the same two cores.\n\n"
        f"{rates}\n\nWhere the CPU went (servers summed over their nodes):\n\n{cpu}\n"
    )


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases.log_progress()
    loadgen.require_tools()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    options = phases.Options(e2e_s=args.seconds, connections=args.connections)
    started = time.time()
    folder = Path(tempfile.mkdtemp(prefix="chatd-bench-cluster-"))
    try:
        results = await measure([(a, w) for a, w in shapes], options, folder)
    except BaseException:
        logger.error("failed; process logs kept in %s", folder)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    how = "python -m bench.scale_out " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(results, how.strip(), started)
    args.output.write_text(text)
    print("\n" + text)
    logger.info("written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
