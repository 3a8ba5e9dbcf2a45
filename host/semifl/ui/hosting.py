"""`--ui` of `semifl run` and `serve`: the page over the session the run makes, from the moment the
session exists (devices joining show up) until the run is over, and `--ui-linger` seconds after."""
from __future__ import annotations

import time
from pathlib import Path


class LiveUI:
    """`hook` is the run's on_session (None without `bind`); leaving the context publishes the final
    state, or stops the server if the run failed; `linger` keeps serving a while, then stops it."""

    def __init__(self, bind: str | None, role_of=None, linger_s: float = 0.0, say=print):
        from .server import parse_bind

        self.bind = parse_bind(bind) if bind else None
        self.role_of, self.linger_s, self.say = role_of, linger_s, say
        self.live = self.server = None

    @property
    def hook(self):
        return self.attach if self.bind else None

    def attach(self, session) -> None:
        from .live import Live
        from .server import UIServer

        path = getattr(session.store, "path", None)
        name = Path(path).parent.name if path and path != ":memory:" else "session"
        self.live = Live(session, name, role_of=self.role_of)
        self.server = UIServer([self.live], *self.bind)
        self.server.start()
        self.say(self.server.banner(), flush=True)

    def __enter__(self) -> "LiveUI":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.server is None:
            return
        if exc_type is None:
            self.live.done()   # the session's thread is done: a last snapshot, and the page says so
        else:
            self.stop()

    def linger(self) -> None:
        """Keep the finished run's page up for `linger_s` seconds (Ctrl-C ends them), then stop."""
        if self.server is None:
            return
        if self.linger_s > 0:
            self.say(f"the run is over; the page stays up for {self.linger_s:.0f} s at {self.server.url} "
                     f"(Ctrl-C ends it)", flush=True)
            try:
                time.sleep(self.linger_s)
            except KeyboardInterrupt:
                pass
        self.stop()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
