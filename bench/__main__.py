"""`make bench`: what chatd costs against a trivial aiohttp server, on both backend sets, in one run.

    python -m bench [--quick] [--sets embedded,real] [--workers 1,2] [--output bench/results.md]

The load comes from wrk and ab (C programs from Debian), not from a Python client: on a 2-core
machine a Python client burns a core of its own and caps what it measures. wrk runs
bench/post_messages.lua, which spreads POST message requests over the chats of one application
with varied bodies. Responses of 400 and above are counted apart and never as throughput.

The ceiling (bench/ceiling.py) is aiohttp + uvloop + orjson answering the same route with 201
{"number": n} and nothing else, in its own process. It is measured in the same run, alternating
with chatd, so that a busy moment on the shared machine hits both; the ratio chatd / ceiling is the
figure to compare between runs and machines, the absolute rates are not.

For each backend set (embedded: SQLite files; real: MariaDB, Redis, RabbitMQ, Elasticsearch):

(a) Acceptance: one `chatd serve --role api` process and no worker (bench/phases.py says why),
    wrk -c64 in alternating rounds: warm-up of each, then ceiling, chatd, ceiling, chatd, ...
    The median round of each (its rate and its latencies), and the ratio of the rates.
(b) The reference design's `ab -n 3000 -c 10 -p message.json -T application/json` against one
    chat, on one api and one worker process (the system as its users run it), and against the
    ceiling just before; then the time until those 3000 messages are all searchable.
(c) End to end: one api and N worker processes (--workers, default 1), wrk -c64 for 60 s, then
    until search finds every message. Messages/s = every message numbered during the run / time
    from the start of the load until the last one was searchable: that is the rate the whole
    pipeline sustains, not the rate the api accepted (also shown). Lag 201 -> searchable: a probe
    posts ~5 messages/s to a chat of its own during the load and polls search for them (see
    bench/probe.py); p50 and p99 of the lags. If the workers fall behind the api, the lag grows
    through the run, and the p99 shows it.
(d) RSS (VmRSS from /proc) of every process, at the end of the load and the peak; on the real
    set the four servers' too.
(e) Where the time goes end to end: CPU seconds per process (api, workers, servers) from the
    start of the load until all is searchable, and per message (bench/procstat.py).
(f) Two tenants (bench/tenants.py): one floods at full speed beside another at a modest rate,
    with the per-application limits off, then on: the second tenant's p95 alone and beside it.

``--only tenants`` runs (f) alone; ``--only create-ab`` runs (a) with the rate limits off and on
(at rates the load never reaches: what the check itself costs) in alternating rounds with the
ceiling (bench/limits_ab.py). Both
write their own file (bench/results-tenants.md, bench/results-create-ab.md) and never the README.

Every phase runs on a new namespace (database, key prefix, queue prefix, index, or SQLite files)
so that one phase's backlog does not slow the next. --quick shortens the rounds (3 s) and the
end-to-end load (5 s) for a check that the benchmark works; its figures are not for the README.
The tables go to stdout and, as markdown, to --output (bench/results.md, or
bench/results-quick.md with --quick). A full run of both sets with the default output also
replaces the tables in README.md, between its `bench:results` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import limits_ab, loadgen, phases, report, tenants
from bench.deploy import Ceiling
from bench.report import SetResult
from bench.tenants import TenantsRun

logger = logging.getLogger("bench")
HERE = Path(__file__).parent
ONLY = ("tenants", "create-ab")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short rounds, to check the benchmark runs")
    parser.add_argument("--sets", default="embedded,real", help="backend sets, comma-separated")
    parser.add_argument("--workers", default="1", help="worker counts for the end-to-end phase, e.g. 1,2")
    parser.add_argument("--rounds", type=int, help="acceptance rounds per target (3)")
    parser.add_argument("--round-seconds", type=float, help="length of an acceptance round (10; 3 with --quick)")
    parser.add_argument("--seconds", type=float, help="end-to-end load (60; 5 with --quick)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--chats", type=int, default=10, help="chats the load is spread over")
    parser.add_argument("--output", type=Path, help="markdown file to write")
    parser.add_argument("--only", choices=ONLY, help="one measurement: (f) two tenants, or (a) with limits off and on")
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    if not sets or any(name not in report.SET_NAMES for name in sets):
        parser.error(f"--sets takes a comma-separated list of {', '.join(report.SET_NAMES)}")
    args.sets = sets
    return args


def options_from(args: argparse.Namespace) -> phases.Options:
    quick = args.quick
    return phases.Options(
        rounds=args.rounds or 3,
        round_s=args.round_seconds or (3.0 if quick else 10.0),
        warmup_s=1.0 if quick else 2.0,
        connections=args.connections,
        threads=args.threads,
        chats=args.chats,
        e2e_s=args.seconds or (5.0 if quick else 60.0),
        workers=tuple(int(n) for n in args.workers.split(",")),
        drain_timeout_s=120.0 if quick else 600.0,
    )


async def run_set(name: str, ceiling: Ceiling, options: phases.Options, folder: Path) -> SetResult:
    result = SetResult()
    logger.info("%s: acceptance, %d x %g s rounds against chatd and the ceiling", name, options.rounds, options.round_s)
    result.acceptance = await phases.acceptance(name, ceiling, options, folder / name)
    logger.info("%s: chatd / ceiling %.2fx", name, result.acceptance.ratio)
    result.tenants = await _tenants(name, options, folder)
    for index, workers in enumerate(options.workers):
        logger.info("%s: end to end with %d worker(s), %g s of load", name, workers, options.e2e_s)
        ab_pair, run = await phases.end_to_end(name, ceiling, options, folder / name, workers, with_ab=index == 0)
        result.ab = result.ab or ab_pair
        result.end_to_end.append(run)
        logger.info("%s: %s stored + searchable msg/s", name, report.rate(run.messages_per_s))
    return result


async def _tenants(name: str, options: phases.Options, folder: Path) -> list[TenantsRun]:
    logger.info("%s: two tenants, limits off then on, %g s each part", name, options.round_s)
    return [await tenants.two_tenants(name, options, folder / name, limits_on) for limits_on in (False, True)]


async def run_only(what: str, sets: list[str], ceiling: Ceiling, options: phases.Options, folder: Path) -> str:
    """``--only``'s measurement on every set, as markdown."""
    if what == "tenants":
        return tenants.tenants_table({name: await _tenants(name, options, folder) for name in sets}, options)
    results = {}
    for name in sets:
        logger.info("%s: the create path with the rate limits off and on, alternating", name)
        results[name] = await limits_ab.create_ab(name, ceiling, options, folder / name)
    return limits_ab.ab_table(results, options)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    # Only the benchmark's own progress: the backends' clients (Elasticsearch's logs every request
    # at INFO) and chatd's modules imported for the set-up keep the default (warnings and up).
    phases.log_progress()
    loadgen.require_tools()
    started, machine_line = time.time(), report.machine()
    folder = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
    ceiling = await Ceiling(folder).start()
    results: dict[str, SetResult] = {}
    only_text = ""
    try:
        if args.only:
            only_text = await run_only(args.only, args.sets, ceiling, options, folder)
        for name in [] if args.only else args.sets:
            results[name] = await run_set(name, ceiling, options, folder)
    except BaseException:
        logger.error("failed; process logs kept in %s", folder)
        raise
    finally:
        ceiling.stop()
    shutil.rmtree(folder, ignore_errors=True)
    how = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.only:
        return _write_only(args, only_text, started, machine_line, how.strip())
    two_tenants = tenants.tenants_table({name: result.tenants for name, result in results.items()}, options)
    text = report.markdown(results, options, started, machine_line, how.strip(), [two_tenants])
    output = args.output or HERE / ("results-quick.md" if args.quick else "results.md")
    output.write_text(text)
    print("\n" + text)
    logger.info("written to %s", output)
    if not args.quick and args.output is None and {"embedded", "real"} <= set(args.sets):
        if report.splice_into_readme(HERE.parent / "README.md", text):
            logger.info("README.md's Performance tables replaced by this run's")
    return 0


def _write_only(args: argparse.Namespace, text: str, started: float, machine_line: str, how: str) -> int:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    text = f"Measured with `{how}` on {when}: {machine_line}; chatd {report.revision()}.\n\n{text}\n"
    output = args.output or HERE / f"results-{args.only}.md"
    output.write_text(text)
    print("\n" + text)
    logger.info("written to %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
