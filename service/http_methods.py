"""HEAD and OPTIONS for every route: FastAPI routes answer only the methods they declare (405 else).

HEAD runs the GET route and drops the body (headers, Content-Length included, are those of GET), so
monitors and link checkers that probe with HEAD work. OPTIONS answers 204 with an ``Allow`` header
naming the methods of the matched route; the service sets no CORS policy, so no CORS headers.
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBED = ("GET", "POST", "PUT", "PATCH", "DELETE")


class HeadAndOptions:
    """ASGI middleware: HEAD as a body-less GET, OPTIONS as 204 + ``Allow``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method") if scope["type"] == "http" else None
        if method == "HEAD":
            await self.app({**scope, "method": "GET"}, receive, _without_body(send))
        elif method == "OPTIONS":
            allowed = _allowed(scope)
            if allowed is None:
                await self.app(scope, receive, send)
                return
            headers = [(b"allow", ", ".join(sorted(allowed)).encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            await self.app(scope, receive, send)


def _without_body(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return wrapped


def _allowed(scope: Scope) -> set[str] | None:
    """The methods some route fully matches on this path (None: no route has this path)."""
    app = scope.get("app")
    routes = list(getattr(getattr(app, "router", None), "routes", ()))
    methods = {
        method for method in PROBED if any(_full(route, {**scope, "method": method}) for route in routes)
    }
    if not methods:
        return None
    if "GET" in methods:
        methods.add("HEAD")
    return methods | {"OPTIONS"}


def _full(route: object, scope: Scope) -> bool:
    try:
        match, _ = route.matches(scope)  # type: ignore[attr-defined]
    except Exception:  # a malformed path matches nothing
        return False
    return bool(match == Match.FULL)
