"""The benchmark's pure parts (benchmarks/report.py, benchmarks/drive.py): parsing and the
table. Timings are never asserted: they depend on the machine."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = load("report")
drive = load("drive")

WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:18400/introspect
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.11ms    3.02ms  61.44ms   91.20%
    Req/Sec     1.60k   120.33     1.75k    90.00%
  Latency Distribution
     50%   19.52ms
     75%   20.40ms
     90%   22.03ms
     99%    1.02s
  12822 requests in 8.01s, 4.20MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   1600.75
Transfer/sec:    536.94KB
BAD 5
"""


def test_wrk_output_is_read() -> None:
    run = report.parse_wrk(WRK_OUTPUT)
    assert run.requests == 12822
    assert run.seconds == pytest.approx(8.01)
    assert run.p50_ms == pytest.approx(19.52)
    assert run.p99_ms == pytest.approx(1020.0)
    assert run.errors == 4 + 3 + 5
    assert run.rate == pytest.approx(12822 / 8.01)


@pytest.mark.parametrize(
    ("text", "ms"), [("612.00us", 0.612), ("1.5ms", 1.5), ("2s", 2000.0), ("1.00m", 60000.0)]
)
def test_wrk_durations(text: str, ms: float) -> None:
    assert report.duration_ms(text) == pytest.approx(ms)


def test_output_without_a_request_count_is_refused() -> None:
    with pytest.raises(ValueError, match="no request count"):
        report.parse_wrk("unable to connect to 127.0.0.1:18400 Connection refused\n")


def test_cpu_ticks_are_utime_plus_stime_even_with_spaces_in_the_name() -> None:
    line = "4242 (uvicorn worker 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 3"
    assert report.cpu_ticks(line) == 1234 + 567


def test_summary_takes_medians_and_adds_errors() -> None:
    runs = [
        report.Run(requests=100, seconds=1, p50_ms=2, p99_ms=9, cpu_ms_per_request=1, rss_mib=90),
        report.Run(requests=300, seconds=1, p50_ms=4, p99_ms=7, cpu_ms_per_request=3, rss_mib=95),
        report.Run(requests=200, seconds=1, p50_ms=3, p99_ms=8, errors=1, rss_mib=80),
    ]
    summary = report.summarise(runs)
    assert (summary.median, summary.low, summary.high) == (200, 100, 300)
    assert (summary.p50_ms, summary.p99_ms, summary.errors, summary.rss_mib) == (3, 8, 1, 95)


def test_table_has_a_row_per_workload_and_the_ratio() -> None:
    ours = report.summarise(
        [report.Run(requests=1200, seconds=1, p50_ms=1, p99_ms=2, cpu_ms_per_request=0.5)]
    )
    peer = report.summarise(
        [report.Run(requests=1000, seconds=1, p50_ms=1, p99_ms=2, cpu_ms_per_request=0.2)]
    )
    lines = report.table([("W3", "sqlite", ours, peer), ("W7", "sqlite", ours, None)]).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| workload")
    assert set(lines[1]) <= {"|", "-"}
    cells = [cell.strip() for cell in lines[2].split("|")]
    assert cells[-3:-1] == ["1.20\N{MULTIPLICATION SIGN}", "0.40\N{MULTIPLICATION SIGN}"]
    assert lines[3].rstrip(" |").endswith("n/a")


def test_the_driver_reads_hidden_form_fields() -> None:
    page = (
        '<form method="post" action="/consent?x=1&amp;y=2">'
        '<input type="hidden" name="csrf_token" value="a&amp;b">'
        '<input type="hidden" name="consent_nonce" value="n1">'
        '<input type="email" name="email" value="">'
    )
    assert drive.hidden_fields(page) == {"csrf_token": "a&b", "consent_nonce": "n1"}
    assert drive.FORM_ACTION.search(page).group(1) == "/consent?x=1&amp;y=2"


def test_percentiles() -> None:
    samples = [i / 1000 for i in range(1, 101)]
    assert drive.percentile(samples, 0.5) == pytest.approx(0.051)
    assert drive.percentile(samples, 0.99) == pytest.approx(0.1)
    assert drive.percentile([], 0.99) == 0.0


def test_the_cpu_harness_waits_for_a_whole_response() -> None:
    """benchmarks/cpu.py's in-memory connection hands back a response only once its head and
    `content-length` bytes of body have been written, however the server cut them."""
    cpu = load("cpu")

    async def scenario() -> list[bytes]:
        transport = cpu.Transport()
        got = []
        for pieces in (
            [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", b"\r\nhel", b"lo"],
            [b"HTTP/1.1 204 No Content\r\nx: y\r\n\r\n"],
        ):
            waiter = transport.waiter = asyncio.get_running_loop().create_future()
            for piece in pieces:
                assert not waiter.done()
                transport.write(piece)
            got.append(await waiter)
        return got

    first, second = asyncio.run(scenario())
    assert first.endswith(b"\r\n\r\nhello")
    assert second.startswith(b"HTTP/1.1 204 ")
