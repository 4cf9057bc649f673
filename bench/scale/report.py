"""The scale benchmark's outputs: a markdown report, the README's block and a PNG chart."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- bench-scale:start -->", "<!-- bench-scale:end -->"

# The targets, p95 in ms: (real, embedded), by the start of a kind's name.
TARGETS = {"search:": (25.0, 50.0), "list: first": (15.0, 10.0), "list: middle page, cursor": (15.0, 10.0),
           "list: last": (15.0, 10.0), "get: one message": (5.0, None)}  # fmt: skip


def target(kind: str, backend_set: str) -> float | None:
    for prefix, (real, embedded) in TARGETS.items():
        if kind.startswith(prefix):
            return real if backend_set == "real" else embedded
    return None


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")  # fmt: skip
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cores} cores ({cpu}), Debian 12, every server and the load client on the same machine"


def markdown(results: list[dict[str, Any]], seconds: float, connections: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {stamp} on {machine()}; load average {os.getloadavg()[0]:.2f} at the end."
        f" `make bench-scale`: wrk -c{connections} (a read's own latency, not a load test),"
        f" {seconds:g} s per kind after a 1 s warm-up, against one `--role api` process.",
        "",
    ]
    sets = sorted({r["backend_set"] for r in results}, key=lambda s: s != "real")
    largest = {s: max((r for r in results if r["backend_set"] == s), key=lambda r: r["messages"]) for s in sets}
    lines += _reads_table(largest, sets)
    lines += ["", "p95 (ms) by corpus size:", ""]
    lines += _by_size_table(results, sets)
    lines += ["", "Load, rebuild, memory and disk:", ""]
    lines += _operations_table(results)
    lines += ["", "Another tenant's small-chat search, alone and while 4 clients run the heaviest hot-chat search:", ""]
    lines += ["| set | size | heaviest search | alone p95 | beside it p95 | ratio |", "|---|---:|---|---:|---:|---:|"]
    for r in results:
        c = r["contention"]
        ratio = c["loaded"]["p95_ms"] / max(c["alone"]["p95_ms"], 1e-6)
        lines.append(f"| {r['backend_set']} | {r['messages']:,} | {c['heavy']} | {c['alone']['p95_ms']:.1f} ms"
                     f" | {c['loaded']['p95_ms']:.1f} ms | {ratio:.1f}x |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _reads_table(largest: dict[str, dict[str, Any]], sets: list[str]) -> list[str]:
    header = "| read |" + "".join(f" {s} {largest[s]['messages']:,}: p50 / p95 / p99 ms | target p95 |" for s in sets)
    lines = [header, "|---|" + "---:|---:|" * len(sets)]
    for kind in largest[sets[0]]["reads"]:
        row = f"| {kind} |"
        for s in sets:
            read = largest[s]["reads"].get(kind)
            goal = target(kind, s)
            mark = "" if goal is None or read is None else (" met" if read["p95_ms"] <= goal else " **missed**")
            row += f" {read['p50_ms']:.1f} / {read['p95_ms']:.1f} / {read['p99_ms']:.1f} |" if read else " - |"
            row += f" {goal:g}{mark} |" if goal else " - |"
        lines.append(row)
    return lines


def _by_size_table(results: list[dict[str, Any]], sets: list[str]) -> list[str]:
    columns = [
        (s, r["messages"]) for s in sets for r in sorted(results, key=lambda r: r["messages"]) if r["backend_set"] == s
    ]
    lines = ["| read |" + "".join(f" {s} {n:,} |" for s, n in columns), "|---|" + "---:|" * len(columns)]
    index = {(r["backend_set"], r["messages"]): r for r in results}
    for kind in results[0]["reads"]:
        lines.append(f"| {kind} |" + "".join(f" {index[c]['reads'][kind]['p95_ms']:.1f} |" for c in columns))
    return lines


def _operations_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| set | messages | bulk load | `chatd reindex` | full recount | fold: none / 1,000 pending | RSS api / worker"
        " | store / index on disk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["backend_set"], r["messages"])):
        rss, disk, rec = r["rss_mib"], r["disk_mib"], r["reconcile"]
        lines.append(
            f"| {r['backend_set']} | {r['messages']:,} | {r['load_s']:.1f} s | {r['reindex_s']:.1f} s"
            f" ({r['reindex_per_s']:,.0f}/s) | {rec['recount_all_s']:.2f} s"
            f" | {rec['fold_nothing_pending_ms']:.1f} / {rec['fold_1000_pending_ms']:.1f} ms"
            f" | {rss.get('api', 0):.0f} / {rss.get('worker', 0):.0f} MiB"
            f" | {disk['store']:.0f} / {disk['index']:.0f} MiB |"
        )
    return lines


def chart(results: list[dict[str, Any]], path: Path) -> None:
    """p95 against corpus size, one panel per backend set, one line per read kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["backend_set"] for r in results}, key=lambda s: s != "real")
    figure, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 6), sharey=True, squeeze=False)
    for axis, backend_set in zip(axes[0], sets, strict=True):
        rows = sorted((r for r in results if r["backend_set"] == backend_set), key=lambda r: r["messages"])
        sizes = [r["messages"] for r in rows]
        for kind in rows[0]["reads"]:
            style = "-" if kind.startswith("search") else "--"
            axis.plot(sizes, [r["reads"][kind]["p95_ms"] for r in rows], style, marker="o", label=kind, linewidth=1.2)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(f"{backend_set} backends")
        axis.set_xlabel("messages in the store")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("p95 latency (ms, wrk)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle("chatd reads against corpus size (make bench-scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def update_readme(block: str) -> bool:
    text = README.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        return False
    README.write_text(pattern.sub(lambda _: f"{START}\n{block}{END}", text))
    return True
