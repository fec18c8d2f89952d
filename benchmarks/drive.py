"""Load drivers for the workloads wrk cannot express: each connection follows its own state.

W5 rotates a refresh token chain per connection, W6 runs authorization code flows in a
signed-in browser session with remembered consent, W7 signs in with a password. Every
connection first signs in and consents once through the server's own pages (not timed).

    python drive.py W5 '<target json>' --connections 32 --duration 8

prints one JSON object: requests, units (chains advanced, flows, sign-ins), errors, the
first error, seconds, and latency percentiles of the timed requests. Run with the project's
.venv (httpx is a project dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

HIDDEN = re.compile(r"<input[^>]*type=\"hidden\"[^>]*>")
ATTRIBUTE = re.compile(r"(name|value)=\"([^\"]*)\"")
FORM_ACTION = re.compile(r"<form[^>]*method=\"post\"[^>]*action=\"([^\"]*)\"")
MAX_HOPS = 12


class Failed(Exception):
    pass


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hidden_fields(page: str) -> dict[str, str]:
    fields = {}
    for tag in HIDDEN.findall(page):
        attributes = dict(ATTRIBUTE.findall(tag))
        if "name" in attributes:
            fields[html.unescape(attributes["name"])] = html.unescape(attributes.get("value", ""))
    return fields


class Browser:
    """One connection: a cookie jar, the target's endpoints, and the latencies it saw."""

    def __init__(self, target: dict[str, Any], latencies: list[float]) -> None:
        self.target = target
        self.latencies = latencies
        self.http = httpx.AsyncClient(
            base_url=target["base"], limits=httpx.Limits(max_connections=1), timeout=30
        )
        self.auth = (target["client_id"], target["client_secret"])

    async def request(self, method: str, url: str, timed: bool, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = await self.http.request(method, url, **kwargs)
        if timed:
            self.latencies.append(time.perf_counter() - started)
        if response.status_code >= 400:
            answer = f"{response.status_code} {response.text[:200]}"
            raise Failed(f"{method} {urlsplit(url).path} -> {answer}")
        return response

    async def authorize(self, timed: bool) -> tuple[str, str]:
        """(code, verifier): from /authorize through any sign-in and consent pages."""
        verifier, challenge = pkce()
        params = {
            "response_type": "code",
            "client_id": self.target["client_id"],
            "redirect_uri": self.target["redirect_uri"],
            "scope": self.target["scope"],
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.target.get("resource"):
            params["resource"] = self.target["resource"]
        response = await self.request("GET", self.target["authorize"], timed, params=params)
        for _ in range(MAX_HOPS):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(self.target["redirect_uri"]):
                    query = parse_qs(urlsplit(location).query)
                    if "code" not in query:
                        raise Failed(f"no code in the redirect: {location[:200]}")
                    return query["code"][0], verifier
                if timed:
                    raise Failed(f"remembered consent still went to {location[:120]}")
                response = await self.request("GET", location, timed)
            else:
                response = await self.submit(response)
        raise Failed("too many redirects")

    async def submit(self, page: httpx.Response) -> httpx.Response:
        """Fill the page's form as a person would: sign in, or allow."""
        action = FORM_ACTION.search(page.text)
        if action is None:
            raise Failed(f"a page with no form at {page.url}")
        form = hidden_fields(page.text)
        if 'name="password"' in page.text:
            form.update(email=self.target["email"], password=self.target["password"])
        else:
            form["decision"] = "allow"
        url = urljoin(str(page.url), html.unescape(action.group(1)))
        return await self.request("POST", url, False, data=form)

    async def redeem(self, code: str, verifier: str, timed: bool) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": self.target["redirect_uri"],
        }
        response = await self.request(
            "POST", self.target["token"], timed, data=form, auth=self.auth
        )
        return dict(response.json())

    async def refresh(self, refresh_token: str) -> str:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        response = await self.request("POST", self.target["token"], True, data=form, auth=self.auth)
        successor = response.json().get("refresh_token")
        if not successor or successor == refresh_token:
            raise Failed("refresh did not rotate the token")
        return str(successor)

    async def sign_in(self) -> None:
        """W7: GET the sign-in page once for its CSRF cookie, then POST the password each
        time with no session cookie, as a new browser would."""
        if not hasattr(self, "_login_form"):
            page = await self.request("GET", self.target["login"], False)
            self._login_form = hidden_fields(page.text)
            self._csrf = {k: v for k, v in self.http.cookies.items() if "csrf" in k}
        self.http.cookies.clear()
        for name, value in self._csrf.items():
            self.http.cookies.set(name, value)
        form = {**self._login_form, "email": self.target["email"]}
        form["password"] = self.target["password"]
        response = await self.request("POST", self.target["login"], True, data=form)
        if response.status_code != 303:
            raise Failed(f"sign-in answered {response.status_code}")


async def connection(
    workload: str, target: dict[str, Any], latencies: list[float], state: dict[str, Any]
) -> None:
    browser = Browser(target, latencies)
    prepared = False
    try:
        refresh_token = None
        if workload in ("W5", "W6"):
            code, verifier = await browser.authorize(timed=False)
            tokens = await browser.redeem(code, verifier, timed=False)
            refresh_token = tokens.get("refresh_token")
            if workload == "W5" and not refresh_token:
                raise Failed("no refresh token from the code flow")
        prepared = True
        state["prepared"] += 1
        await state["start"].wait()
        while time.perf_counter() < state["deadline"]:
            if workload == "W5":
                refresh_token = await browser.refresh(str(refresh_token))
            elif workload == "W6":
                code, verifier = await browser.authorize(timed=True)
                await browser.redeem(code, verifier, timed=True)
            else:
                await browser.sign_in()
            state["units"] += 1
    except (Failed, httpx.HTTPError) as error:
        state["errors"] += 1
        state.setdefault("first_error", f"{type(error).__name__}: {error}")
    finally:
        if not prepared:
            state["prepared"] += 1
        await browser.http.aclose()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def drive(
    workload: str, target: dict[str, Any], connections: int, duration: float
) -> dict[str, Any]:
    """Set up every connection (sign-in, consent, first tokens), then time `duration`."""
    latencies: list[float] = []
    state: dict[str, Any] = {
        "start": asyncio.Event(),
        "deadline": float("inf"),
        "prepared": 0,
        "units": 0,
        "errors": 0,
    }
    tasks = [
        asyncio.create_task(connection(workload, target, latencies, state))
        for _ in range(connections)
    ]
    while state["prepared"] < connections:  # noqa: ASYNC110 (connections count themselves in)
        await asyncio.sleep(0.05)
    print("started", flush=True)
    started = time.perf_counter()
    state["deadline"] = started + duration
    state["start"].set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "units": state["units"],
        "errors": state["errors"],
        "first_error": state.get("first_error"),
        "seconds": round(seconds, 3),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=["W5", "W6", "W7"])
    parser.add_argument("target", help="JSON: base, authorize, token, login, client_id, ...")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8)
    args = parser.parse_args()
    target = json.loads(args.target)
    result = asyncio.run(drive(args.workload, target, args.connections, args.duration))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
