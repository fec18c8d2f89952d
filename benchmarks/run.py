#!/usr/bin/env python3
"""authserver side by side with node-oidc-provider: one command, one table.

    python3 benchmarks/run.py            # 3 runs × 8 s × 32 connections, SQLite and PostgreSQL
    python3 benchmarks/run.py --quick    # 1 run × 2 s: a smoke run
    python3 benchmarks/run.py --scaling  # W1/W2 on PostgreSQL with 1, 2 and 4 workers

It installs what it needs (the project's .venv, wrk from apt when missing, `oidc-provider`
from npm into a throw-away folder outside the repository), starts one server at a time on
core 0 with the load generator on core 1, and fails loudly on any error answer, on a W2
token that is not active, and on a rate-limit answer. The per-client token budget and the
sign-in budgets are lifted for the run (AUTHSERVER_TOKEN_RATE_PER_CLIENT and
AUTHSERVER_LOGIN_RATE_PER_*): the limiter still counts every request.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import report  # noqa: E402

import tasks  # noqa: E402

PEER_VERSION = "9"
PEER_DIR = Path(tempfile.gettempdir()) / "authserver-bench-peer"
CALLBACK = "http://127.0.0.1:18999/cb"
RESOURCE = "https://api.bench.example"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/authserver_bench"
EMAIL, PASSWORD = "bench@example.com", "a long benchmark passphrase"
LIFTED = "1000000000"
HZ = os.sysconf("SC_CLK_TCK")

WORKLOADS = ("W1-RS256", "W1-ES256", "W2", "W3", "W4", "W5", "W6", "W7")
DRIVEN = ("W5", "W6", "W7")
WHAT = {
    "W1-RS256": "client_credentials, RS256 access token",
    "W1-ES256": "client_credentials, ES256 access token",
    "W2": "introspection of a valid access token",
    "W3": "JWKS",
    "W4": "discovery",
    "W5": "refresh-token rotation, one chain per connection (/s = rotations)",
    "W6": "authorization code flow, signed in, consent remembered (/s = flows)",
    "W7": "password sign-in (/s = sign-ins)",
}


class BenchError(Exception):
    pass


# -- processes -----------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's workers are children of the supervisor)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in tree(pid):
        try:
            total += report.cpu_ticks(Path(f"/proc/{member}/stat").read_text())
        except (OSError, ValueError):
            continue
    return total / HZ


def rss_mib(pid: int) -> float:
    total = 0
    for member in tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


@contextmanager
def measured(pid: int) -> Iterator[dict[str, float]]:
    """CPU seconds used by the server's process tree and its largest RSS during the block."""
    result = {"cpu": 0.0, "rss": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            result["rss"] = max(result["rss"], rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    before = cpu_seconds(pid)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["cpu"] = cpu_seconds(pid) - before
        result["rss"] = max(result["rss"], rss_mib(pid))


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (loopback)
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise BenchError(f"{url} did not answer in 60 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def form_post(url: str, form: dict[str, str], auth: tuple[str, str]) -> dict[str, Any]:
    basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return dict(json.load(response))


# -- the servers ---------------------------------------------------------------------------


@dataclass
class Target:
    """A running server as the workloads see it."""

    name: str
    base: str
    pid: int
    paths: dict[str, str]
    client_id: str
    client_secret: str
    forms: dict[str, str]
    driver: dict[str, Any] = field(default_factory=dict)

    def url(self, path_name: str) -> str:
        return self.base + self.paths[path_name]

    @property
    def basic(self) -> str:
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return base64.b64encode(raw).decode()


def authserver(name: str) -> str:
    return str(tasks.BIN / name)


def our_environment(work: Path, url: str, issuer: str, alg: str) -> dict[str, str]:
    """The environment our server runs with in a benchmark: logs on, budgets lifted."""
    env = {
        **os.environ,
        "AUTHSERVER_ISSUER": issuer,
        "AUTHSERVER_DATABASE_URL": url,
        "AUTHSERVER_KEYS_DIR": str(work / "keys"),
        "AUTHSERVER_LOG_FORMAT": "json",
        "AUTHSERVER_ACCESS_TOKEN_ALG": alg,
        "AUTHSERVER_TOKEN_RATE_PER_CLIENT": LIFTED,
        "AUTHSERVER_LOGIN_RATE_PER_IP": LIFTED,
        "AUTHSERVER_LOGIN_RATE_PER_ACCOUNT": LIFTED,
    }
    env.pop("AUTHSERVER_REDIS_URL", None)
    return env


def provision(work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Migrate, create the bench user and one client for every grant; the client as JSON."""
    run = {"env": env, "cwd": work, "check": True, "capture_output": True}
    subprocess.run([authserver("authserver"), "migrate"], **run)  # type: ignore[call-overload]
    subprocess.run(  # type: ignore[call-overload]
        [authserver("authserver"), "users", "create", "--email", EMAIL, "--password-stdin"],
        input=PASSWORD.encode(),
        **run,
    )
    created = subprocess.run(  # type: ignore[call-overload]
        [
            *(authserver("authserver"), "clients", "create", "--name", "bench", "--json"),
            *("--redirect-uri", CALLBACK, "--scope", "openid offline_access bench:read"),
            *("--grant-type", "client_credentials", "--grant-type", "authorization_code"),
            *("--grant-type", "refresh_token"),
        ],
        **run,
    )
    return dict(json.loads(created.stdout))


@contextmanager
def ours(database: str, port: int, alg: str, workers: int, cpus: str) -> Iterator[Target]:
    """Our server on a fresh database: migrated, one user, one client for every grant."""
    with tempfile.TemporaryDirectory(prefix="authserver-bench-") as folder:
        work = Path(folder)
        url = f"sqlite:///{work / 'bench.db'}" if database == "sqlite" else PG_URL
        if database == "postgresql":
            recreate_postgres_database()
        env = our_environment(work, url, f"http://127.0.0.1:{port}", alg)
        client = provision(work, env)
        log = work / "server.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [
                    *("taskset", "-c", cpus, authserver("authserver"), "serve"),
                    *("--port", str(port), "--workers", str(workers)),
                ],
                env=env,
                cwd=work,
                stdout=sink,
                stderr=sink,
            )
        try:
            wait_for(f"http://127.0.0.1:{port}/health", process, log)
            yield Target(
                name="ours",
                base=f"http://127.0.0.1:{port}",
                pid=process.pid,
                paths={
                    "token": "/token",
                    "introspect": "/introspect",
                    "jwks": "/jwks.json",
                    "discovery": "/.well-known/openid-configuration",
                    "authorize": "/authorize",
                    "login": "/login",
                },
                client_id=client["client_id"],
                client_secret=client["client_secret"],
                forms={
                    "W1": "grant_type=client_credentials&scope=bench%3Aread",
                    "W2-token": "grant_type=client_credentials&scope=bench%3Aread",
                },
                driver={"scope": "openid offline_access", "resource": None},
            )
        finally:
            stop(process)
            errors = [line for line in log.read_text().splitlines() if '"level": "error"' in line]
            if errors:
                raise BenchError(f"our server logged errors: {errors[:3]}")


def recreate_postgres_database() -> None:
    for statement in (
        "DROP DATABASE IF EXISTS authserver_bench WITH (FORCE)",
        "CREATE DATABASE authserver_bench",
    ):
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", statement],
            check=True,
            capture_output=True,
        )


@contextmanager
def peer(port: int, alg: str, cpus: str) -> Iterator[Target]:
    client_id, secret = "bench", "peer-benchmark-client-secret-0123456789"
    script = PEER_DIR / "peer.mjs"
    shutil.copy(BENCH / "peer.mjs", script)
    env = {
        **os.environ,
        "NODE_ENV": "production",
        "PEER_PORT": str(port),
        "PEER_CLIENT_ID": client_id,
        "PEER_CLIENT_SECRET": secret,
        "PEER_CALLBACK": CALLBACK,
        "PEER_RESOURCE": RESOURCE,
        "PEER_AT_ALG": alg,
    }
    log = PEER_DIR / "peer.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["taskset", "-c", cpus, "node", str(script)],
            env=env,
            cwd=PEER_DIR,
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/.well-known/openid-configuration", process, log)
        resource = urllib.parse.quote(RESOURCE, safe="")
        yield Target(
            name="peer",
            base=f"http://127.0.0.1:{port}",
            pid=process.pid,
            paths={
                "token": "/token",
                "introspect": "/token/introspection",
                "jwks": "/jwks",
                "discovery": "/.well-known/openid-configuration",
                "authorize": "/auth",
            },
            client_id=client_id,
            client_secret=secret,
            forms={
                "W1": f"grant_type=client_credentials&scope=api%3Aread&resource={resource}",
                "W2-token": "grant_type=client_credentials",
            },
            driver={"scope": "openid offline_access api:read", "resource": RESOURCE},
        )
    finally:
        stop(process)


# -- installing what is needed -------------------------------------------------------------


def install() -> None:
    tasks.ensure_installed(None)
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if shutil.which(tool) is None:
            print(f"installing {package} with apt-get ...", flush=True)
            subprocess.run(["apt-get", "install", "-y", "-q", package], check=True)
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        if shutil.which("npm") is None:
            raise BenchError("npm is needed to install the peer (node-oidc-provider)")
        print(f"installing oidc-provider@{PEER_VERSION} into {PEER_DIR} ...", flush=True)
        PEER_DIR.mkdir(parents=True, exist_ok=True)
        (PEER_DIR / "package.json").write_text('{"private": true, "type": "module"}\n')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "-q", f"oidc-provider@{PEER_VERSION}"],
            cwd=PEER_DIR,
            check=True,
        )


# -- workloads -----------------------------------------------------------------------------


def lua_script(method: str, body: str | None, basic: str | None, check_active: bool) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines += [
            f'wrk.body = "{body}"',
            'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"',
        ]
    if basic is not None:
        lines.append(f'wrk.headers["Authorization"] = "Basic {basic}"')
    if check_active:
        lines += [
            "local threads = {}",
            "function setup(thread) table.insert(threads, thread) end",
            "function init(args) bad = 0 end",
            "function response(status, headers, body)",
            "  if status ~= 200 or not string.find(body, '\"active\":true', 1, true) then",
            "    bad = bad + 1",
            "  end",
            "end",
            "function done(summary, latency, requests)",
            "  local n = 0",
            '  for _, t in ipairs(threads) do n = n + t:get("bad") end',
            '  io.write(string.format("BAD %d\\n", n))',
            "end",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Options:
    runs: int
    duration: float
    connections: int
    load_cpus: str


def wrk_run(target: Target, workload: str, options: Options, duration: float) -> report.Run:
    if workload.startswith("W1"):
        url = target.url("token")
        script = lua_script("POST", target.forms["W1"], target.basic, False)
    elif workload == "W2":
        token = form_post(
            target.url("token"),
            dict(urllib.parse.parse_qsl(target.forms["W2-token"])),
            (target.client_id, target.client_secret),
        )["access_token"]
        url = target.url("introspect")
        script = lua_script("POST", f"token={token}", target.basic, True)
    else:
        url = target.url("jwks" if workload == "W3" else "discovery")
        script = lua_script("GET", None, None, False)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        command = [
            *("taskset", "-c", options.load_cpus, "wrk", "-t1", f"-c{options.connections}"),
            *(f"-d{duration:g}s", "--timeout", "10s", "--latency", "-s", file.name, url),
        ]
        with measured(target.pid) as usage:
            finished = subprocess.run(command, capture_output=True, text=True, check=True)
        run = report.parse_wrk(finished.stdout)
        if "BAD" not in finished.stdout and workload == "W2":
            raise BenchError("the introspection check did not report")
    finally:
        os.unlink(file.name)
    return _with_usage(run, usage)


def driver_run(target: Target, workload: str, options: Options, duration: float) -> report.Run:
    described = {
        "base": target.base,
        "authorize": target.paths["authorize"],
        "token": target.paths["token"],
        "login": target.paths.get("login", ""),
        "client_id": target.client_id,
        "client_secret": target.client_secret,
        "redirect_uri": CALLBACK,
        "email": EMAIL,
        "password": PASSWORD,
        **target.driver,
    }
    command = [
        *("taskset", "-c", options.load_cpus, str(tasks.BIN / "python")),
        *(str(BENCH / "drive.py"), workload[:2], json.dumps(described)),
        *("--connections", str(options.connections), "--duration", f"{duration:g}"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    # The set-up (one sign-in and consent per connection) is not measured: the driver
    # prints "started" when its clock starts.
    first = process.stdout.readline()
    if first.strip() != "started":
        process.wait()
        said = process.stderr.read() if process.stderr else ""
        raise BenchError(f"driver failed: {first}{said[-2000:]}")
    with measured(target.pid) as usage:
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise BenchError(f"driver failed: {stderr[-2000:]}")
    result = json.loads(stdout)
    run = report.Run(
        requests=result["units"],
        seconds=result["seconds"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        errors=result["errors"],
        first_error=result["first_error"],
        extra={"http_requests": result["requests"]},
    )
    return _with_usage(run, usage)


def _with_usage(run: report.Run, usage: dict[str, float]) -> report.Run:
    run.cpu_ms_per_request = usage["cpu"] * 1000 / run.requests if run.requests else 0.0
    run.rss_mib = usage["rss"]
    return run


def measure(target: Target, workload: str, options: Options) -> report.Summary:
    runner: Callable[[Target, str, Options, float], report.Run]
    runner = driver_run if workload in DRIVEN else wrk_run
    if workload not in DRIVEN:
        runner(target, workload, options, min(1.0, options.duration))  # warm-up
    runs = []
    for number in range(options.runs):
        run = runner(target, workload, options, options.duration)
        print(
            f"  {target.name:4} {workload:8} run {number + 1}: {run.rate:8,.0f}/s "
            f"p50 {run.p50_ms:.1f} ms p99 {run.p99_ms:.1f} ms "
            f"cpu {run.cpu_ms_per_request:.2f} ms/req rss {run.rss_mib:.0f} MiB "
            f"errors {run.errors}",
            flush=True,
        )
        if run.errors:
            raise BenchError(
                f"{target.name} {workload}: {run.errors} errors ({run.first_error or 'see wrk'})"
            )
        runs.append(run)
    return report.summarise(runs)


def measure_server(
    start: Callable[[str], Any], workloads: list[str], options: Options
) -> dict[str, report.Summary]:
    """Every workload against one server; W1-ES256 needs a restart with ES256 tokens."""
    results = {}
    for alg in ("RS256", "ES256"):
        chosen = [w for w in workloads if (w == "W1-ES256") == (alg == "ES256")]
        if not chosen:
            continue
        with start(alg) as target:
            for workload in chosen:
                if target.name == "peer" and workload == "W7":
                    continue
                results[workload] = measure(target, workload, options)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1 run × 2 s")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--scaling", action="store_true", help="W1/W2, PostgreSQL, 1/2/4 workers")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--port", type=int, default=18400, help="ours; the peer gets port + 1")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    parser.add_argument("--table-from", type=Path, help="print the table of a --json file")
    args = parser.parse_args()
    if args.table_from:
        print(table_from(json.loads(args.table_from.read_text())))
        return 0
    if args.quick:
        args.runs, args.duration = 1, 2.0
    options = Options(args.runs, args.duration, args.connections, args.load_cpus)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    install()
    print(
        f"{options.runs} run(s) × {options.duration:g} s × {options.connections} connections; "
        f"server on CPU {args.server_cpus}, load on CPU {args.load_cpus}; "
        f"load average now {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.scaling:
        return scaling(args, options)

    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    results: dict[str, dict[str, report.Summary]] = {}
    for database in databases:
        print(f"ours on {database}", flush=True)
        results[database] = measure_server(
            lambda alg, db=database: ours(db, args.port, alg, 1, args.server_cpus),
            workloads,
            options,
        )
    peer_results: dict[str, report.Summary] = {}
    if not args.no_peer:
        print("peer (node-oidc-provider)", flush=True)
        peer_results = measure_server(
            lambda alg: peer(args.port + 1, alg, args.server_cpus), workloads, options
        )
    rows = [
        (workload, database, results[database].get(workload), peer_results.get(workload))
        for workload in workloads
        for database in databases
    ]
    print()
    print(report.table(rows))
    print()
    for workload in workloads:
        print(f"{workload}: {WHAT[workload]}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        everything = {**results, "peer": peer_results}
        summaries = {name: {w: vars(s) for w, s in r.items()} for name, r in everything.items()}
        args.json.write_text(json.dumps(summaries, indent=2))
    return 0


def table_from(saved: dict[str, dict[str, dict[str, Any]]]) -> str:
    peer_results = saved.pop("peer", {})
    workloads = [w for w in WORKLOADS if any(w in r for r in [*saved.values(), peer_results])]
    rows = []
    for workload in workloads:
        for database, results in saved.items():
            ours_summary = results.get(workload)
            peer_summary = peer_results.get(workload)
            rows.append(
                (
                    workload,
                    database,
                    report.Summary(**ours_summary) if ours_summary else None,
                    report.Summary(**peer_summary) if peer_summary else None,
                )
            )
    return report.table(rows)


def scaling(args: argparse.Namespace, options: Options) -> int:
    rows = []
    for workers in (1, 2, 4):
        with ours("postgresql", args.port, "RS256", workers, args.server_cpus) as target:
            for workload in ("W1-RS256", "W2"):
                summary = measure(target, workload, options)
                rows.append((f"{workload} × {workers} workers", "postgresql", summary, None))
    print()
    print(report.table(rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(1)
