"""The web app's guards, kept apart from the routes (engine/web/server.py):

* `Sessions`: the page's login. `/?token=T` is traded once for a cookie holding a random session value the
  server keeps in memory (never the token itself, so a copied cookie does not reveal the token, and every
  session ends with the server). API clients send `Authorization: Bearer` or `X-Token` instead.
* `AllowedHosts`: requests whose `Host` header is not a name this server answers to are refused (a DNS
  rebinding page would send its own name).
* `GuardMiddleware`: the Host check, security headers on every response, and the access log (method and
  path only: a query string never reaches a log line).
"""
from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections import OrderedDict

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

access_log = logging.getLogger("xmodal.web.access")

SESSION_COOKIE = "xmodal_session"
MAX_SESSIONS = 1000  # the oldest is forgotten past this many
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# The page is same-origin HTML, CSS and JS files (no inline script or style, no third-party origin); `blob:` images
# are the page's own preview of a query photo chosen from the disk (URL.createObjectURL), never fetched from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


class Sessions:
    """Random session values issued in exchange for the token; held in memory."""

    def __init__(self, limit: int = MAX_SESSIONS):
        self._live: OrderedDict[str, float] = OrderedDict()
        self.limit = limit

    def issue(self) -> str:
        value = secrets.token_urlsafe(32)
        self._live[value] = time.time()
        while len(self._live) > self.limit:
            self._live.popitem(last=False)
        return value

    def valid(self, value: str | None) -> bool:
        return bool(value) and value in self._live  # 256 random bits: a hash lookup leaks nothing useful


def _normal(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if ":" in name and not name.startswith("["):  # an IPv6 address: a Host header brackets it
        name = f"[{name}]"
    return name


def host_name(header: str) -> str:
    """The name in a Host header, without its port: 'example.org:8000' -> 'example.org', '[::1]:80' -> '[::1]'."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[:end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


class AllowedHosts:
    """Host names the server answers to: loopback names, plus `names` (the bound address, --allow-host).
    Bound to every address (0.0.0.0 or ::), any IP address is also accepted: a DNS rebinding page always
    sends a domain name, never a bare address."""

    def __init__(self, names=()):
        self.names = set(LOOPBACK_NAMES) | {_normal(n) for n in names if n and n.strip()}
        self.any_ip = bool(self.names & {"0.0.0.0", "[::]"})

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        return name in self.names or (self.any_ip and _is_ip(name))


class GuardMiddleware:
    """Pure ASGI: refuses unknown Host headers (400 JSON), adds SECURITY_HEADERS, logs method, path, status."""

    def __init__(self, app, hosts: AllowedHosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {}

        async def send_guarded(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key not in headers:
                        headers[key] = value
            await send(message)

        try:
            host = Headers(scope=scope).get("host")
            if self.hosts.allows(host):
                await self.app(scope, receive, send_guarded)
            else:
                name = host_name(host or "")[:100]
                detail = (f"this server does not answer to the host name {name!r}; if that is yours, start it "
                          f"with --allow-host {name}") if name else "the request has no Host header"
                await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send_guarded)
        finally:  # the path alone: a query string (a token, a search) never reaches the log
            access_log.info("%s %s %s %.0f ms", scope.get("method"), scope.get("path"), status.get("code", "-"),
                            (time.perf_counter() - started) * 1000)


class _BodyTooLarge(Exception):
    pass


class UploadLimitMiddleware:
    """Pure ASGI: a POST to `path` whose body passes `limit` bytes is a 400 JSON (`message(length or None)`):
    from Content-Length before reading, else (chunked) as soon as the bytes read pass it -- never read whole."""

    def __init__(self, app, path: str, limit: int, message):
        self.app, self.path, self.limit, self.message = app, path, limit, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, receive, send, int(length))
        state = {"read": 0, "over": False, "started": False}

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.limit:
                    state["over"] = True
                    raise _BodyTooLarge()
            return message

        async def send_unless_over(message):
            if state["over"]:  # the app answered the aborted read (FastAPI: "error parsing the body"): ours instead
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(scope, receive, send, None)
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, send_unless_over)
        except _BodyTooLarge:
            if not state["started"]:
                await self._refuse(scope, receive, send, None)

    async def _refuse(self, scope, receive, send, length):
        await JSONResponse({"detail": self.message(length)}, status_code=400,
                           headers={"Connection": "close"})(scope, receive, send)
