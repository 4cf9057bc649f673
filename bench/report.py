"""The tables: printed on stdout and written as markdown for the README's Performance section.

The same markdown is both: its columns are padded, so it reads as a table in a terminal too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.phases import AbPair, Acceptance, EndToEnd, Options

SET_NAMES = {"embedded": "embedded (SQLite)", "real": "real (MariaDB, Redis, RabbitMQ, ES)"}


@dataclass
class SetResult:
    acceptance: Acceptance | None = None
    ab: AbPair | None = None
    end_to_end: list[EndToEnd] = field(default_factory=list)
    tenants: list[Any] = field(default_factory=list)  # bench.tenants.TenantsRun, limits off then on


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if round(value, 1) < 10 else f"{value:.0f} ms"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} x {model}, {kib / 1024**2:.1f} GiB, {platform.system()} {platform.release()}; "
        f"load average {load:.2f} when the run started"
    )


def revision() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
        return result.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" with uncommitted changes in chatd/" if git("status", "--porcelain", "--", "chatd") else "")


def acceptance_table(results: dict[str, SetResult], options: Options) -> str:
    rows = []
    for name, result in results.items():
        if (a := result.acceptance) is None:
            continue
        non_2xx = sum(r.non_2xx for r in a.chatd_rounds)
        errors = sum(r.socket_errors for r in a.chatd_rounds)
        rows.append(
            [
                SET_NAMES[name],
                rate(a.chatd.ok_per_s),
                rate(a.ceiling.ok_per_s),
                ratio(a.ratio),
                ms(a.chatd.p50_ms),
                ms(a.chatd.p99_ms),
                ms(a.ceiling.p99_ms),
                f"{non_2xx} / {errors}",
            ]
        )
    header = ["backends", "chatd 2xx/s", "ceiling 2xx/s", "chatd / ceiling", "chatd p50", "chatd p99"]
    header += ["ceiling p99", "chatd non-2xx / socket errors"]
    return (
        f"**(a) API acceptance.** wrk -t{options.threads} -c{options.connections} POST message over "
        f"{options.chats} chats against one `chatd serve --role api` process (no worker), and against the "
        f"ceiling (bench/ceiling.py) in alternating rounds of {options.round_s:g} s; the median of "
        f"{options.rounds} rounds each.\n\n" + table(header, rows)
    )


def ab_table(results: dict[str, SetResult], options: Options) -> str:
    rows = []
    for name, result in results.items():
        if (pair := result.ab) is None:
            continue
        chatd, ceiling = pair.chatd, pair.ceiling
        rows.append(
            [
                SET_NAMES[name],
                rate(chatd.ok_per_s),
                ms(chatd.p50_ms),
                ms(chatd.p99_ms),
                f"{chatd.non_2xx} / {chatd.failed}",
                rate(ceiling.ok_per_s),
                ms(ceiling.p50_ms),
                ms(ceiling.p99_ms),
                ratio(chatd.ok_per_s / ceiling.ok_per_s),
                seconds(pair.searchable_after_s),
            ]
        )
    header = ["backends", "chatd req/s", "chatd p50", "chatd p99", "non-2xx / failed", "ceiling req/s"]
    header += ["ceiling p50", "ceiling p99", "chatd / ceiling", f"all {options.ab_requests} searchable after"]
    return (
        f"**(b) The reference design's `ab -n {options.ab_requests} -c {options.ab_concurrency}`** "
        "(`-p message.json -T application/json`, one chat, a new connection per request) against chatd "
        "(one api and one worker process), and against the ceiling right before it.\n\n" + table(header, rows)
    )


def end_to_end_table(results: dict[str, SetResult], options: Options) -> str:
    rows = []
    for name, result in results.items():
        for run in result.end_to_end:
            rows.append(
                [
                    SET_NAMES[name],
                    str(run.workers),
                    rate(run.load.ok_per_s),
                    ms(run.load.p99_ms),
                    f"{run.load.non_2xx} / {run.load.socket_errors}",
                    f"{run.messages:,}" + ("" if run.searchable >= run.messages else f" ({run.searchable:,} found)"),
                    seconds(run.all_searchable_s) if run.all_searchable_s else "timed out",
                    rate(run.messages_per_s),
                    seconds(run.lag_p50_s),
                    seconds(run.lag_p99_s),
                    f"{run.probes}" + (f" ({run.probes_failed} failed)" if run.probes_failed else ""),
                ]
            )
    header = ["backends", "workers", "accepted 2xx/s", "api p99", "non-2xx / socket errors", "messages"]
    header += ["all searchable after", "stored + searchable msg/s", "lag p50", "lag p99", "probes"]
    return (
        f"**(c) End to end.** wrk -t{options.threads} -c{options.connections} POST message over {options.chats} "
        f"chats for {options.e2e_s:g} s against one api process with its workers; then until search finds every "
        "message. All searchable after: from the start of the load. msg/s = messages / that time. Lag = from "
        f"a probe message's 201 to the first search that lists it ({options.probe_rate:g} probes/s during the "
        "load, polled every 50 ms).\n\n" + table(header, rows)
    )


def rss_table(results: dict[str, SetResult]) -> str:
    rows = []
    for name, result in results.items():
        if result.acceptance is not None:
            rows.append([SET_NAMES[name], "api (acceptance)", "-", f"{result.acceptance.rss['api']:.0f}"])
        for run in result.end_to_end:
            for process, end in run.rss_end_of_load.items():
                label = f"{process} (end to end, {run.workers} worker{'s' if run.workers > 1 else ''})"
                rows.append([SET_NAMES[name], label, f"{end:.0f}", f"{run.rss_peak[process]:.0f}"])
    peaks = [r.acceptance.rss["ceiling"] for r in results.values() if r.acceptance is not None]
    if peaks:
        rows.append(["-", "ceiling", "-", f"{max(peaks):.0f}"])
    return "**(d) Resident memory** (VmRSS, MiB) per process.\n\n" + table(
        ["backends", "process", "at the end of the load", "peak"], rows
    )


def cpu_table(results: dict[str, SetResult]) -> str:
    rows = []
    for name, result in results.items():
        for run in result.end_to_end:
            total = sum(run.cpu_s.values())
            for process, used in [*sorted(run.cpu_s.items(), key=lambda item: -item[1]), ("all of these", total)]:
                per_message = used * 1000 / max(1, run.messages)
                share = f"{used / total:.0%}" if total else "-"
                rows.append([SET_NAMES[name], str(run.workers), process, f"{used:.1f}", f"{per_message:.3f}", share])
    return (
        "**(e) Where the time goes, end to end:** CPU seconds each process used from the start of the load "
        "until every message was searchable, and per message. The servers are found by name and serve "
        "anything else running on the machine meanwhile.\n\n"
        + table(["backends", "workers", "process", "CPU s", "CPU ms per message", "share"], rows)
    )


def ratios_line(results: dict[str, SetResult]) -> str:
    embedded, real = results.get("embedded"), results.get("real")
    if not (embedded and real and embedded.end_to_end and real.end_to_end):
        return ""
    e, r = embedded.end_to_end[0], real.end_to_end[0]
    if not (e.messages_per_s and r.messages_per_s):
        return ""
    workers = f"{e.workers} worker{'s' if e.workers > 1 else ''}"
    return f"Real / embedded, stored + searchable msg/s with {workers}: {ratio(r.messages_per_s / e.messages_per_s)}."


def markdown(
    results: dict[str, SetResult], options: Options, started: float, machine_line: str, how: str, extra: list[str]
) -> str:
    """The run's tables; ``extra``: more of them after these (bench/tenants.py's (f))."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    head = (
        f"Measured with `{how}` on {when}: {machine_line}; chatd {revision()}. Every chatd process, the "
        "servers and the load clients share these cores: compare the ratios from one run.\n"
    )
    parts = [head, acceptance_table(results, options), ab_table(results, options)]
    parts += [end_to_end_table(results, options), ratios_line(results), rss_table(results), cpu_table(results)]
    parts += extra
    return "\n\n".join(part.rstrip() for part in parts if part) + "\n"


README_START = "<!-- bench:results:start (written by make bench) -->"
README_END = "<!-- bench:results:end -->"


def splice_into_readme(readme: Path, tables: str) -> bool:
    """Put ``tables`` between the README's markers; False (and nothing written) without them."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(README_START)] + "\n" + tables.strip() + "\n" + text[end:])
    return True
