"""The page's HTTP server: Starlette on uvicorn, on a thread of its own in the host process.

Starlette and uvicorn because they are small, maintained, pure-Python packages that serve server-sent
events from one event loop (a Flask development server holds a thread per open page, and is not meant
to serve anything) and start inside another program's thread without taking its signals. Read-only:
only GET routes exist. Bound beyond loopback it requires a token (`?token=`, `Authorization: Bearer`,
or the cookie the page gets when opened with the token), and says so at start-up.

Routes (every /api route takes `run=i`, the source's index, default 0):
  /                      the page;  /static/...  its scripts, styles and uPlot
  /api/runs              the sources: [{"run", "name", "mode"}]
  /api/state             header numbers: round, online per class, bytes, rejections, accuracy, joules
  /api/devices           the fleet table: q, online, sort, desc, offset, limit (ui/table.py)
  /api/rounds?since=N    finished rounds after N, compact;  /api/round/N  one round's stored metrics
  /api/rejections        counts by reason and the latest stored rejections with their detail
  /api/events            server-sent events: `state` whenever a new snapshot or round is there
  /metrics               Prometheus text format (ui/metrics.py), of source 0
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from semifl.transport.mqtt import is_loopback_host

from .metrics import CONTENT_TYPE, exposition, registry_for

log = logging.getLogger("semifl.ui")
STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "semifl_ui_token"
EVENT_TICK_S = 0.1   # how often an open event stream looks for a new snapshot


def parse_bind(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); the host defaults to 127.0.0.1 (loopback: no token needed)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--ui takes [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080, got {text!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"--ui port {p} is not in 0..65535")
    return host, p


class TokenGate(BaseHTTPMiddleware):
    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request, call_next):
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("this page needs its token: open the URL `semifl` printed at start-up\n", 401)
        response = await call_next(request)
        if request.query_params.get("token"):   # the page's own requests (fetch, EventSource) carry it as a cookie
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def make_app(sources: list, token: str | None = None, should_exit=lambda: False) -> Starlette:
    registry = registry_for(sources[0])

    def source(request):
        try:
            return sources[int(request.query_params.get("run", 0))]
        except (ValueError, IndexError):
            return None

    def api(fn):
        async def endpoint(request):
            src = source(request)
            if src is None:
                return JSONResponse({"error": "no such run"}, 404)
            return JSONResponse(fn(src, request), headers={"cache-control": "no-store"})
        return endpoint

    def q_int(request, key, default):
        try:
            return int(request.query_params.get(key, default))
        except ValueError:
            return default

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def runs(request):
        return JSONResponse([{"run": i, "name": s.name, "mode": s.state()["mode"]} for i, s in enumerate(sources)])

    def devices(src, request):
        p = request.query_params
        return src.devices(q=p.get("q", ""), online=p.get("online", ""), sort=p.get("sort", "id"),
                           desc=p.get("desc", "") in ("1", "true"), offset=q_int(request, "offset", 0),
                           limit=q_int(request, "limit", 100))

    async def one_round(request):
        src = source(request)
        m = src.round(int(request.path_params["n"])) if src is not None else None
        return JSONResponse(m, 200 if m is not None else 404)

    async def events(request):
        src = source(request)
        if src is None:
            return JSONResponse({"error": "no such run"}, 404)

        async def stream():
            seen, beat = None, time.monotonic()
            while not should_exit():
                st = src.state()
                key = (st["seq"], st["rounds_done"], st["mode"], st["rejections_stored"])
                if key != seen:
                    seen, beat = key, time.monotonic()
                    yield f"event: state\ndata: {json.dumps(st)}\n\n"
                elif time.monotonic() - beat > 15:   # a comment keeps proxies from closing an idle stream
                    beat = time.monotonic()
                    yield ": idle\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(EVENT_TICK_S)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    async def metrics(request):
        return Response(exposition(registry), media_type=CONTENT_TYPE)

    routes = [
        Route("/", index), Route("/api/runs", runs),
        Route("/api/state", api(lambda s, r: s.state())),
        Route("/api/devices", api(devices)),
        Route("/api/rounds", api(lambda s, r: s.rounds(q_int(r, "since", 0)))),
        Route("/api/round/{n:int}", one_round),
        Route("/api/rejections", api(lambda s, r: s.rejections(q_int(r, "limit", 200)))),
        Route("/api/events", events), Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)] if token else [])


class UIServer:
    """uvicorn serving `make_app(sources)` on a daemon thread. Beyond loopback a token is required:
    `token`, else $SEMIFL_UI_TOKEN, else a new random one (in the URL `start` returns)."""

    def __init__(self, sources: list, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        import os

        import uvicorn

        self.host, self.sources = host, sources
        self.token = None if is_loopback_host(host) else (token or os.environ.get("SEMIFL_UI_TOKEN") or
                                                          secrets.token_urlsafe(18))
        self._stop = threading.Event()
        app = make_app(sources, self.token, should_exit=self._stop.is_set)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                                    access_log=False, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="semifl-ui", daemon=True)
        self.port = port

    def start(self, timeout: float = 10.0) -> str:
        """Serve; -> the page's URL (with the token when one is required)."""
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise OSError(f"the UI could not listen on {self.host}:{self.port} (in use?)")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def banner(self) -> str:
        """The start-up line: where the page is, and whether it needs a token and why."""
        if self.token:
            return (f"UI on {self.url} (bound to {self.host}, beyond loopback: every request needs the token; "
                    f"Prometheus: `authorization: credentials` with it; read-only)")
        return f"UI on {self.url} (loopback only, read-only; /metrics for Prometheus)"

    def stop(self) -> None:
        self._stop.set()
        self.server.should_exit = True
        self.thread.join(5)
