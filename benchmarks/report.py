"""The benchmark's pure parts: reading wrk's output, summarising runs, printing the table."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any

_DURATION_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def duration_ms(text: str) -> float:
    """wrk's `612.00us`, `1.23ms`, `2.01s`, `1.00m` in milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


@dataclass
class Run:
    """One timed run of one workload against one server."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    first_error: str | None = None
    cpu_ms_per_request: float = 0.0
    rss_mib: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str) -> Run:
    """A `Run` from `wrk --latency` output. Errors are non-2xx/3xx answers, socket errors,
    and `BAD <n>` lines a workload's Lua script prints (e.g. inactive introspection)."""
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m)", output, re.M)
    if total is None:
        raise ValueError("no request count in wrk output")
    latency = {
        percent: duration_ms(value)
        for percent, value in re.findall(r"^\s*(50|99)(?:\.000)?%\s+(\S+)", output, re.M)
    }
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    bad = re.search(r"^BAD (\d+)", output, re.M)
    if bad:
        errors += int(bad.group(1))
    return Run(
        requests=int(total.group(1)),
        seconds=duration_ms(total.group(2) + total.group(3)) / 1000,
        p50_ms=latency.get("50", 0.0),
        p99_ms=latency.get("99", 0.0),
        errors=errors,
    )


def cpu_ticks(stat_line: str) -> int:
    """utime + stime from a /proc/<pid>/stat line (the command name may hold spaces)."""
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


@dataclass
class Summary:
    median: float
    low: float
    high: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float
    rss_mib: float
    runs: int


def summarise(runs: list[Run]) -> Summary:
    """Medians over runs (min–max for throughput); errors add up; RSS is the largest."""
    rates = [r.rate for r in runs]
    return Summary(
        median=statistics.median(rates),
        low=min(rates),
        high=max(rates),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        cpu_ms=statistics.median(r.cpu_ms_per_request for r in runs),
        rss_mib=max(r.rss_mib for r in runs),
        runs=len(runs),
    )


def _cell(summary: Summary | None) -> list[str]:
    if summary is None:
        return ["n/a"] * 5
    return [
        f"{summary.median:,.0f} ({summary.low:,.0f}–{summary.high:,.0f})",
        f"{summary.p50_ms:.1f} / {summary.p99_ms:.1f}",
        str(summary.errors),
        f"{summary.cpu_ms:.2f}",
        f"{summary.rss_mib:.0f}",
    ]


HEADER = [
    "workload",
    "ours on",
    "ours /s",
    "p50 / p99 ms",
    "err",
    "CPU ms/req",
    "RSS MiB",
    "peer /s",
    "p50 / p99 ms",
    "err",
    "CPU ms/req",
    "RSS MiB",
    "ours/peer /s",
    "peer/ours CPU",
]


def ratio(ours: Summary | None, peer: Summary | None) -> str:
    if ours is None or peer is None or not peer.median:
        return "n/a"
    return f"{ours.median / peer.median:.2f}×"


def cpu_ratio(ours: Summary | None, peer: Summary | None) -> str:
    """Less sensitive to a busy machine than throughput: the CPU each request cost."""
    if ours is None or peer is None or not ours.cpu_ms:
        return "n/a"
    return f"{peer.cpu_ms / ours.cpu_ms:.2f}×"


def table(rows: list[tuple[str, str, Summary | None, Summary | None]]) -> str:
    """A Markdown table: one row per (workload, our database), the peer beside it."""
    lines = [HEADER]
    for workload, database, ours, peer in rows:
        cells = [*_cell(ours), *_cell(peer), ratio(ours, peer), cpu_ratio(ours, peer)]
        lines.append([workload, database, *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    rendered = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    rendered.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(rendered)
