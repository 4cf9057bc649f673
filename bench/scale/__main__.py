"""``make bench-scale``: chatd's reads at 10k, 100k and 1M stored messages, on both backend sets.

    python -m bench.scale [--sets real,embedded] [--sizes 10000,100000,1000000] [--seconds 5]

For each set and size: a chat-like corpus is bulk-loaded into a fresh namespace
(bench/scale/load.py), ``chatd reindex`` builds the search index from it (timed), one api and
one worker process start, and wrk measures every read kind (bench/scale/queries.py). Writes
bench/scale-results.md and .json, draws bench/scale-latency.png, and replaces the README's
block between the bench-scale markers (with --readme, the default for a full run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import tempfile
from pathlib import Path

from bench.scale import report
from bench.scale.measure import run_size

HERE = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="real,embedded")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=int, default=5, help="timed run per read kind (wrk: whole s)")
    parser.add_argument("--connections", type=int, default=1, help="wrk connections per read kind (latency, not load)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--out", default=str(HERE / "scale-results"), help="path stem of the .md/.json/.png")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make bench-scale` installs it")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    results = []
    with tempfile.TemporaryDirectory(prefix="chatd-scale-") as folder:
        for backend_set in args.sets.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                result = await run_size(
                    backend_set, size, Path(folder) / f"{backend_set}-{size}", args.seconds, args.connections
                )
                results.append(result.as_json())
    stem = Path(args.out)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1))
    block = report.markdown(results, args.seconds, args.connections)
    chart = stem.with_name("scale-latency.png") if stem.name == "scale-results" else Path(f"{stem}.png")
    report.chart(results, chart)
    Path(f"{stem}.md").write_text(block + f"\n![p95 against corpus size]({chart.name})\n")
    print(block)
    if not args.no_readme and report.update_readme(
        block + f"\n![p95 latency against corpus size](bench/{chart.name})\n"
    ):
        print("README.md updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
