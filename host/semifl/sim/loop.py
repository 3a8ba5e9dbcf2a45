"""Many paho-mqtt clients on one selector loop, without a thread per client.

Each client keeps its own connection; the loop drives it through paho's external-loop API: its socket
is watched for reading, and for writing while paho has packets queued (on_socket_register_write);
`loop_misc` (keep-alive pings, a dead link noticed) runs for every client once a second. What the
clients' owners do with a message happens outside paho's callbacks, in `Owner.step`, one message of
one owner at a time, so a device that computes holds up the others no longer than one task.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import time

MISC_S = 1.0          # keep-alive bookkeeping of every client, this often
LEAVE_S = 5.0         # a clean disconnect waits this long for its last QoS-1 publish to be acked
log = logging.getLogger("semifl.worker")


class Owner:
    """What the loop drives: an id (named in the log), a step of work, and whether it has any."""
    id = "-"

    def has_work(self) -> bool:
        return False

    def step(self) -> None:
        """One unit of work (one message); called while has_work()."""

    def gone(self) -> None:
        """Its client has left (a clean disconnect) and is no longer driven."""


class Loop:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.clients: dict = {}            # paho client -> its Owner
        self.work: dict = {}               # Owners with work, in arrival order (a dict as an ordered set)
        self.leaving: dict = {}            # paho client -> (MQTTMessageInfo of its last publish, deadline)
        self.timers: list = []
        self._seq = itertools.count()
        self._misc_at = 0.0
        self.current = None                # the Owner whose code runs now (the log names it)

    # --- clients ---------------------------------------------------------------------------------
    def attach(self, client, owner: Owner) -> None:
        """Drive `client` here (before it connects). Its own on_socket_open (e.g. TCP_NODELAY) still runs."""
        before = client.on_socket_open

        def opened(c, userdata, sock):
            if before is not None:
                before(c, userdata, sock)
            self.sel.register(sock, selectors.EVENT_READ, c)

        client.on_socket_open = opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = lambda c, u, sock: self._events(sock, c, selectors.EVENT_READ | selectors.EVENT_WRITE)
        client.on_socket_unregister_write = lambda c, u, sock: self._events(sock, c, selectors.EVENT_READ)
        self.clients[client] = owner

    def detach(self, client) -> None:
        """Forget `client` (its socket, if any, is no longer watched)."""
        sock = client.socket()
        if sock is not None:
            self._closed(client, None, sock)
        self.clients.pop(client, None)
        self.leaving.pop(client, None)

    def _events(self, sock, client, events):
        try:
            self.sel.modify(sock, events, client)
        except (KeyError, ValueError):
            pass   # not (or no longer) registered: a socket paho is closing

    def _closed(self, client, userdata, sock):
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def leave(self, client, info) -> None:
        """Disconnect `client` cleanly once `info` (its last QoS-1 publish, e.g. presence offline) is
        acked, as a device that waits for it does, or after LEAVE_S."""
        self.leaving[client] = (info, time.monotonic() + LEAVE_S)

    # --- timers and work ---------------------------------------------------------------------------
    def later(self, seconds: float, fn) -> None:
        heapq.heappush(self.timers, (time.monotonic() + seconds, next(self._seq), fn))

    def wake(self, owner: Owner) -> None:
        if owner.has_work():
            self.work[owner] = None

    def run_as(self, owner: Owner, fn, *args):
        """fn(*args) as `owner`'s code (the log names it); an error is logged, not raised: one
        device's failure is its own."""
        self.current = owner
        try:
            return fn(*args)
        except Exception:
            log.exception("%s failed", getattr(fn, "__name__", "a step"))
        finally:
            self.current = None

    # --- the loop ----------------------------------------------------------------------------------
    def once(self, timeout: float) -> None:
        """One pass: wait for sockets (not at all while work is pending), read and write, run due
        timers, keep-alives, then one step of each owner with work. A file the caller registers on
        `sel` with a callable as its data (a control channel) is served through the same select."""
        now = time.monotonic()
        if self.work or self.leaving:
            timeout = 0.0 if self.work else min(timeout, 0.05)
        if self.timers:
            timeout = max(0.0, min(timeout, self.timers[0][0] - now))
        for key, mask in self.sel.select(min(timeout, MISC_S)):
            c = key.data
            if callable(c):   # the caller's own file (a control channel)
                c()
            elif c in self.clients:
                self._io(c, mask)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, fn = heapq.heappop(self.timers)
            fn()
        for c, (info, deadline) in list(self.leaving.items()):
            if info.is_published() or now >= deadline or c.socket() is None:
                del self.leaving[c]
                c.disconnect()
                if c.socket() is None and c in self.clients:   # no link to say goodbye on: gone already
                    self.clients[c].gone()
        self.misc()
        for owner in list(self.work):
            del self.work[owner]
            self.run_as(owner, owner.step)
            self.wake(owner)
            self.misc()   # a long step (training) must not starve every other client's keep-alive

    def _io(self, c, mask) -> None:
        owner = self.clients[c]
        self.current = owner
        try:
            if mask & selectors.EVENT_READ:
                c.loop_read()
                sock = c.socket()
                if sock is not None and getattr(sock, "pending", None) and sock.pending():
                    self.later(0, lambda: c in self.clients and c.socket() is not None and self._io(c, selectors.EVENT_READ))   # TLS bytes epoll cannot see
            if mask & selectors.EVENT_WRITE and c.socket() is not None:
                c.loop_write()
        except Exception:   # one device's failure is its own: the others go on
            log.exception("network loop")
        finally:
            self.current = None
        self.wake(owner)

    def misc(self) -> None:
        now = time.monotonic()
        if now - self._misc_at < MISC_S:
            return
        self._misc_at = now
        for c, owner in list(self.clients.items()):
            if c.socket() is not None:
                self.run_as(owner, c.loop_misc)
