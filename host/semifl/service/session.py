"""The host's session: the plumbing every kind of round shares.

Every device message enters the host here: the link's inbox -> `Session.dispatch` (topic, codec,
registry, chunk assembly, validation) -> the running round object's `on_status` / `on_blob`. A bad
message is rejected with a reason that is logged, stored and counted, and nothing else is lost. The
global model changes only inside a round object (`service/rounds/`), which the session drives round
after round (`Session.run`). The session owns the link, the registry, the store, byte accounting,
one way to send a device something (`send_task`, `send_down`), the announcement and the end of a run.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from semifl.fleet.registry import Registry
from semifl.protocol import wire

log = logging.getLogger("semifl.session")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def expect_tensors(tensors, want: list[tuple[str, tuple]], what: str) -> None:
    """The one shape check: a blob's tensors must be exactly `want`, [(dtype, shape), ...]."""
    got = [(t[0], tuple(t[1])) for t in tensors]
    if got != [(d, tuple(sh)) for d, sh in want]:
        raise Rejected("shape", f"{what} tensors {got[:3]}{'...' if len(got) > 3 else ''} are not {want[:3]}"
                                f"{'...' if len(want) > 3 else ''}")


class Round:
    """What the session asks of a kind of round (service/rounds/), with the defaults most kinds keep:
    no status kinds of their own, no late messages, chunks of the open round only."""
    name = ""

    def on_status(self, dev: str, msg: dict) -> bool:
        """Take a status kind of this round's own; False: not one of them."""
        return False

    def on_blob(self, dev: str, kind: int, blob, crc: int | None = None) -> None:
        """A device's whole blob; crc: its CRC-32 (the wire checked it), so storing it costs no second pass."""
        raise NotImplementedError

    def expects_late(self, dev: str, rnd: int) -> bool:
        """Whether a `ready` of an earlier round from `dev` is expected rather than stale."""
        return False

    def refuse_chunk(self, dev: str, kind: int, blob_id: int, seq: int):
        """None to take a chunk, "drop" to drop it quietly (counted by the round), else why it is stale."""
        return None if blob_id == self.session.round else f"chunk of round {blob_id} during round {self.session.round}"

    def run(self, rnd: int) -> dict:
        raise NotImplementedError


@dataclass
class Limits:
    """Every wait and every bound of the session, as settings (`[host]` in the run configuration)."""
    ready_timeout_s: float = 10.0      # a round's wait for the devices' ready reports
    collect_timeout_s: float = 120.0   # the hard limit on any wait for a device's work
    max_blob: int = 32 << 20
    max_blobs_in_flight: int = 4       # per device: bounds the memory a misbehaving device can pin
    max_device_bytes: int = 64 << 20   # per device: bytes its blobs in progress may hold
    max_bytes_in_flight: int = 256 << 20   # the whole fleet: bytes all blobs in progress may hold
    stalled_blob_s: float = 60.0       # a blob in progress that got no chunk this long may be dropped for room
    threads: int = 1                   # BLAS threads of the host's arithmetic (results must not depend on the machine)


@dataclass
class RoundRecord:
    """What every kind of round records: when it started, where its time went, what devices said."""
    round: int
    t0: float
    up0: Counter
    down0: Counter
    phases: dict = field(default_factory=dict)
    rejected: Counter = field(default_factory=Counter)
    failed: dict = field(default_factory=dict)          # device -> the error it reported (not waited for)
    evals: dict = field(default_factory=dict)           # device -> its on-device int8 evaluation
    refused: dict = field(default_factory=dict)         # device -> why it was not given the model
    device_refused: dict = field(default_factory=dict)  # device -> why it refused the int8 model on arrival
    times: dict = field(default_factory=dict)           # device -> seconds: download, local, upload
    late: Counter = field(default_factory=Counter)      # kind -> contributions that came after their round closed

    def mark(self, phase: str) -> None:
        """Close `phase`: the wall time since the previous mark."""
        self.phases[phase] = time.time() - self.t0 - sum(self.phases.values())

    def took(self, dev: str, **seconds) -> None:
        self.times.setdefault(dev, {}).update({k: round(float(v), 5) for k, v in seconds.items()})


KEEP_REJECTIONS = 100   # per reason and round: stored and logged with their detail; the rest only counted
WAIT_TICK_S = 2.0   # how often a long wait tells the display it is still waiting


class Session:
    def __init__(self, link, store, limits: Limits | None = None):
        self.link, self.store = link, store
        self.limits = limits or Limits()
        self.registry = Registry(store)
        self.clock = getattr(link, "now", time.monotonic)   # virtual on an in-memory link
        self.run_id = store.get_meta("run_id")
        if self.run_id is None:
            self.run_id = int.from_bytes(np.random.default_rng().bytes(4), "little")
            store.set_meta("run_id", self.run_id)
        # the key of every task nonce: kept in the store (a restarted host derives the same nonces), never sent
        secret = store.get_meta("task_secret")
        if secret is None:
            secret = secrets.token_hex(32)
            store.set_meta("task_secret", secret)
        self._task_key = bytes.fromhex(secret)
        self.round = 0
        self.handler = None                 # the round object messages go to
        self.rec = RoundRecord(0, time.time(), Counter(), Counter())
        self.rejected: Counter = Counter()   # reason -> messages refused in this process's run, between rounds too
        self.rejected_by: Counter = Counter()   # (device, reason) -> the same, per device (a live view's fleet table)
        self.taken: Counter = Counter()         # (device, topic leaf) -> messages dispatched without a rejection
        self.on_tick = None                  # on_tick(): after each message (or idle wait) pump saw; cheap when unused
        self.bytes_up: Counter = Counter()
        self.bytes_down: Counter = Counter()
        self._asm: dict[str, dict] = defaultdict(dict)   # device -> {(kind, blob_id, count, blob_len): Assembler}
        self.bytes_in_flight = 0            # what every blob in progress holds (data, pending chunks)
        self._topics: dict[str, tuple[str, str]] = {}    # topic -> (device, leaf), parsed once
        self.on_progress = None             # on_progress(round, text): what a round is doing now, for a display
        self._said = ""

    def progress(self, text: str) -> None:
        """Say what the open round is doing (a device done, a batch through), for a live display."""
        self._said = text
        if self.on_progress:
            self.on_progress(self.round, text)

    # --- outbound ---------------------------------------------------------------------------------
    def task_id(self, rnd: int, dev: str) -> int:
        """The nonce of `dev`'s task in round (or model version) `rnd`: HMAC-SHA256 of (round, device)
        under the run's secret, cut to 52 bits (an integer JSON carries exactly). It reaches only `dev`,
        on its own task topic, so an upload that echoes it is bound to that device and round; nobody
        else can compute it (docs/protocol.md §5)."""
        mac = hmac.new(self._task_key, f"{rnd}/{dev}".encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:7], "little") & ((1 << 52) - 1)

    def run_word(self, label: str) -> int:
        """A non-zero uint32 of the run, derived from its secret (the same after a restart, another in
        another run): e.g. the `fresh` id of CL tasks, which tells devices whose memory of sent samples holds."""
        mac = hmac.new(self._task_key, b"word/" + label.encode(), hashlib.sha256).digest()
        return int.from_bytes(mac[:4], "little") or 1

    def send_task(self, dev: str, task: dict) -> None:
        payload = wire.encode_json(dict(task, v=wire.VERSION))
        self.bytes_down[dev] += len(payload)
        self.link.publish(wire.dev_topic(dev, wire.T_TASK), payload)

    def send_down(self, dev: str, kind: int, blob_id: int, blob: bytes) -> int:
        """A blob for `dev` only, on its own down topic, in chunks it can take. -> bytes sent."""
        sent = self.link.publish_blob(wire.dev_topic(dev, wire.T_DOWN), kind, blob_id, blob,
                                      self.registry.devices[dev]["max_chunk"])
        self.bytes_down[dev] += sent
        return sent

    def broadcast(self, leaf: str, to: list[str], payload: bytes = b"", retain: bool = False, blob=None) -> None:
        """On host/<leaf> to whoever subscribes; counted as received by each of `to`.
        blob: (kind, blob_id, bytes, chunk size) to send chunked instead of `payload`."""
        if blob is None:
            self.link.publish(wire.host_topic(leaf), payload, retain=retain)
            sent = len(payload)
        else:
            sent = self.link.publish_blob(wire.host_topic(leaf), *blob)
        for d in to:
            self.bytes_down[d] += sent

    # --- waiting ----------------------------------------------------------------------------------
    def pump(self, until, timeout: float) -> bool:
        """Dispatch inbound messages until `until()` holds or `timeout` passes; returns until().
        `until` is asked again only when a message may have changed something (not after a chunk
        in the middle of a blob), so it may look at every device."""
        deadline = self.clock() + timeout
        while not until():
            while True:
                left = deadline - self.clock()
                if left <= 0:
                    return False
                msg = self.link.get(min(left, 0.5))
                changed = msg is None or self.dispatch(msg)
                if self.on_tick is not None:
                    self.on_tick()
                if changed:
                    break
        return True

    def wait(self, until, timeout: float, what: str) -> bool:
        """`pump` that tells the display every few seconds how long it has waited for `what` (a long
        wait is not a hang), and says so in the log when its deadline fires."""
        start = self.clock()
        end = start + timeout
        while not self.pump(until, min(end - self.clock(), WAIT_TICK_S)):
            if self.clock() >= end:
                log.warning("round %d: %s: gave up after %.1f s", self.round, what, timeout)
                return False
            self.still(f"waiting for {what}", start, timeout)
        return True

    def still(self, what: str, since: float, limit: float | None = None) -> None:
        """Tell the display a wait goes on: what the round last said, plus `what` and the seconds since
        `since` (of `limit`)."""
        if self.on_progress:
            took = f"{self.clock() - since:.0f}" + (f"/{limit:.0f}" if limit else "")
            self.on_progress(self.round, f"{self._said} · {what} {took} s".lstrip(" ·"))

    def wait_for_devices(self, n: int, timeout: float) -> bool:
        """Until n devices have reported capabilities and are online (the fleet is up)."""
        return self.pump(lambda: len(self.registry.online) >= n, timeout)

    # --- inbound ----------------------------------------------------------------------------------
    def reject(self, dev, reason: str, detail: str) -> None:
        """Count a refused message; the first KEEP_REJECTIONS of each reason per round are also stored and
        logged with their detail, so a flood of junk costs counters, not disk and log lines."""
        self.rec.rejected[reason] += 1
        self.rejected[reason] += 1
        if (dev, reason) in self.rejected_by or len(self.rejected_by) < 1 << 16:   # bounded: made-up ids cannot grow it
            self.rejected_by[(dev, reason)] += 1
        k = self.rec.rejected[reason]
        if k <= KEEP_REJECTIONS:
            self.store.reject(self.round, dev, reason, detail)
            log.warning("rejected from %s: %s (%s)", dev, reason, detail)
        elif k == KEEP_REJECTIONS + 1:
            log.warning("round %d: more than %d %r rejections; the rest of this round's are only counted",
                        self.round, KEEP_REJECTIONS, reason)

    def dispatch(self, msg) -> bool:
        """One inbound message. -> False when it was a chunk that did not complete its blob (nothing
        a round waits for can have changed)."""
        if msg[0] == "_rejected":   # refused by the transport before decoding (oversized)
            _, topic, reason, size = msg
            try:
                dev = wire.parse_dev_topic(topic)[0]
            except ValueError:
                dev = None
            self.reject(dev, reason, f"{size} bytes on {topic}")
            return True
        topic, payload = msg
        dev = None
        try:
            dev, leaf = self._topics.get(topic) or self._parse(topic)
            if leaf in (wire.T_STATUS, wire.T_UP):
                self.bytes_up[dev] += len(payload)
            if leaf == wire.T_CAPS:
                if payload:  # an empty retained payload clears a device's report
                    self.registry.on_caps(dev, wire.decode_json(payload))
            elif leaf == wire.T_PRESENCE:
                self.registry.on_presence(dev, bytes(payload))
            elif not self.registry.known(dev):
                raise Rejected("unknown_device", f"{dev} sent {leaf} before any capability report")
            elif leaf == wire.T_UP:
                done = self._on_chunk(dev, payload)
                self.taken[(dev, leaf)] += 1
                return done
            elif leaf == wire.T_STATUS:
                self._on_status(dev, wire.decode_json(payload))
            elif leaf not in (wire.T_TASK, wire.T_DOWN):  # what we send a device echoes back through a wildcard
                raise Rejected("malformed", f"unknown topic leaf {leaf!r}")
            self.taken[(dev, leaf)] += 1
        except wire.WireError as e:
            self.reject(dev, e.reason, str(e))
        except Rejected as e:
            self.reject(dev, e.reason, e.detail)
        except ValueError as e:
            self.reject(dev, "malformed", str(e))
        return True

    def _parse(self, topic: str) -> tuple[str, str]:
        parsed = wire.parse_dev_topic(topic)
        if len(self._topics) < 1 << 16:   # bounded: a flood of made-up topics cannot grow it
            self._topics[topic] = parsed
        return parsed

    def _on_status(self, dev: str, msg: dict) -> None:
        """Reports any round kind may get; the rest goes to the round object."""
        kind, rnd, rec = msg.get("kind"), msg.get("round"), self.rec
        if not isinstance(rnd, int) or isinstance(rnd, bool):
            raise Rejected("schema", "status without an integer round")
        if kind == "eval":   # asynchronous: a board may take minutes; `round` names the model it ran
            acc, n = msg.get("accuracy"), msg.get("n")
            if not isinstance(acc, (int, float)) or not 0 <= acc <= 1 or not isinstance(n, int) or n <= 0:
                raise Rejected("schema", "eval status needs accuracy in [0, 1] and a positive n")
            rec.evals[dev] = {"model_round": rnd, "accuracy": float(acc), "n": n, "ms": msg.get("ms")}
        elif kind == "refused":   # the int8 model of round `round` was refused on arrival
            rec.device_refused[dev] = str(msg.get("reason", "?"))[:40]
            log.warning("%s refused the int8 model of round %d: %s %s", dev, rnd, rec.device_refused[dev],
                        str(msg.get("detail", ""))[:200])
        elif kind == "phase":   # marks for a bench's power meter (semifl.meters.align): nothing to do here
            pass
        elif kind == "error" and msg.get("error") == "WireError":
            # a message the device refused to parse (a damaged model chunk, junk on its topics): not a
            # task it failed, so it is not given up for the round
            log.info("round %d: %s refused a message: %s", rnd, dev, str(msg.get("detail", ""))[:200])
        elif kind == "error":   # the device could not do its task (out of memory, bad model, ...)
            rec.failed[dev] = str(msg.get("error", "?"))[:40]
            log.warning("round %d: %s reports %s: %s", rnd, dev, rec.failed[dev], str(msg.get("detail", ""))[:200])
        elif kind == "ready":
            if rnd < self.round and self.handler is not None and self.handler.expects_late(dev, rnd):
                return   # a straggler answering an announcement it missed while it worked
            self.check_round(rnd, f"status {kind!r}")
            self.registry.on_ready(dev, msg)
        elif self.handler is None or not self.handler.on_status(dev, msg):
            raise Rejected("schema", f"unknown status kind {kind!r}")

    def check_round(self, rnd, what: str) -> None:
        if rnd != self.round:
            raise Rejected("stale_round", f"{what} for round {rnd} during round {self.round}")

    def _on_chunk(self, dev: str, payload: bytes) -> bool:
        """One chunk of `dev`'s upload (docs/protocol.md §6). A blob in progress is keyed by its layout
        (kind, blob id, count, blob_len): a chunk of another layout starts a blob of its own beside it and
        never restarts or displaces it; a device that sends its blob again from the start (same layout)
        goes on where it was. A corrupt chunk is refused alone. Memory grows with the bytes that arrived,
        within a per-device and a fleet-wide cap."""
        kind, blob_id, seq, count, blob_len, bcrc, data = wire.decode_chunk(payload, self.limits.max_blob)
        why = self.handler.refuse_chunk(dev, kind, blob_id, seq) if self.handler else "no round is open"
        if why == "drop":   # the round object has counted it (late): nothing to reject
            return False
        if why:
            raise Rejected("stale_round", why)
        key = (kind, blob_id, count, blob_len)
        held = self._asm[dev]
        asm = held.get(key)
        if asm is None:
            if len(held) >= self.limits.max_blobs_in_flight and not self._evict_stalled(dev):
                raise Rejected("oversized", f"{dev} has {len(held)} blobs in flight")
            held = self._asm[dev]   # eviction may have let go of the device's (emptied) dict
            asm = held[key] = wire.Assembler(kind, blob_id, count, blob_len)
            asm.t_last = self.clock()
        elif seq < asm.next_seq or seq in asm.pending:
            return asm.add(kind, blob_id, seq, count, blob_len, bcrc, data)   # a duplicate: holds nothing more
        need = len(data) + wire.Assembler.OVERHEAD
        if sum(a.held for a in held.values()) + need > self.limits.max_device_bytes:
            self._forget(dev, key, asm, empty_only=True)
            raise Rejected("oversized", f"{dev}'s blobs in flight would pass {self.limits.max_device_bytes} bytes")
        if self.bytes_in_flight + need > self.limits.max_bytes_in_flight and not self._evict_stalled(None, need):
            self._forget(dev, key, asm, empty_only=True)
            raise Rejected("oversized", f"blobs in flight would pass {self.limits.max_bytes_in_flight} bytes")
        before = asm.held
        try:
            complete = asm.add(kind, blob_id, seq, count, blob_len, bcrc, data)
        except wire.WireError:
            self._forget(dev, key, asm)   # a broken blob is dropped whole; the device may send it again
            raise
        asm.t_last = self.clock()
        self.bytes_in_flight += asm.held - before
        if not complete:
            return False
        self._forget(dev, key, asm)
        # the assembled bytearray, not copied again, and its CRC-32 as assembly computed it (the spool's)
        self.handler.on_blob(dev, kind, asm.buf, crc=asm.crc)
        return True

    def _forget(self, dev: str, key: tuple, asm, empty_only: bool = False) -> None:
        """Stop assembling `asm` and give back what it held (`empty_only`: only if it holds nothing)."""
        if empty_only and (asm.held or asm.next_seq):
            return
        if self._asm[dev].get(key) is asm:
            del self._asm[dev][key]
            self.bytes_in_flight -= asm.held
        if not self._asm[dev]:
            del self._asm[dev]

    def _evict_stalled(self, dev: str | None, need: int = 0) -> bool:
        """Drop blobs in progress that got no chunk for `stalled_blob_s` (of `dev`, or the fleet's) so
        a blob abandoned (or made up) cannot hold a slot or bytes for ever. -> whether room was made."""
        now, limit = self.clock(), self.limits.stalled_blob_s
        devs = [dev] if dev is not None else list(self._asm)
        freed = False
        for d in devs:
            for key, asm in list(self._asm.get(d, {}).items()):
                if now - asm.t_last > limit:
                    log.info("dropped %s's blob %s in progress: no chunk for %.0f s", d, key[:2], now - asm.t_last)
                    self._forget(d, key, asm)
                    freed = True
        if dev is not None:
            return freed and len(self._asm.get(dev, {})) < self.limits.max_blobs_in_flight
        return self.bytes_in_flight + need <= self.limits.max_bytes_in_flight

    def drop_partial(self) -> None:
        """Forget blobs still arriving (a round closed: what did not complete by then is dropped)."""
        self._asm.clear()
        self.bytes_in_flight = 0

    def open_blob(self, dev: str, blob: bytes, rnd: int | None = None) -> tuple[dict, list]:
        """Decode a device's blob and check it (`check_blob`). -> (meta, tensors)."""
        meta, tensors = wire.decode_blob(blob)
        self.check_blob(dev, meta, rnd)
        return meta, tensors

    def check_blob(self, dev: str, meta: dict, rnd: int | None = None) -> None:
        """What every kind of blob must hold: round `rnd` (default: the session's), this device, its
        task for that round, a positive sample count n (CL samples may be none: the fresh-samples rule)."""
        want = self.round if rnd is None else rnd
        if meta.get("round") != want:
            raise Rejected("stale_round", f"blob for round {meta.get('round')} during round {want}")
        if meta.get("device") != dev:
            raise Rejected("schema", f"blob says device {meta.get('device')!r}, topic says {dev!r}")
        if meta.get("task") != self.task_id(want, dev):
            raise Rejected("replay", f"task {meta.get('task')} is not this round's task for {dev}")
        n = meta.get("n")
        least = 0 if meta.get("kind") == "samples" else 1   # an uploader with nothing new sends none
        if not isinstance(n, int) or isinstance(n, bool) or n < least:
            raise Rejected("schema", "blob needs a positive integer n (samples: non-negative)")

    def gone(self, dev: str) -> bool:
        """A device nobody waits for any more this round: it reported an error, or it went offline."""
        return dev in self.rec.failed or dev not in self.registry.online

    # --- rounds -----------------------------------------------------------------------------------
    def resume(self, name: str) -> tuple[list | None, tuple[dict, dict] | None]:
        """What a restarted host goes on from: (the model of the last completed round, the round
        object's state kept with it as (meta, arrays)), both None on a fresh store. A store of a run
        of another strategy is refused."""
        last = self.store.last_completed_round()
        if not last:
            return None, None
        kept = self.store.strategy_state()
        if kept is not None and kept[0].get("strategy") != name:
            raise ValueError(f"{self.store.path} holds a run of strategy {kept[0].get('strategy')!r}, not {name!r}")
        return self.store.checkpoint(last), (kept[0]["state"], kept[1]) if kept is not None else None

    def begin(self, rnd: int) -> RoundRecord:
        """Open round `rnd`: a fresh record, the byte counters as they stand."""
        self.round = rnd
        self.rec = RoundRecord(rnd, time.time(), Counter(self.bytes_up), Counter(self.bytes_down))
        return self.rec

    def announce(self, rnd: int, busy=()) -> list[str]:
        """Announce the round (retained) and wait for the devices' link reports, up to ready_timeout_s;
        devices still `busy` with an earlier round's task are not waited for. -> who answered."""
        reg = self.registry
        online = sorted(reg.online)
        reg.expect_ready(rnd, busy)   # before the announcement: no answer can come before the wait counts it
        self.broadcast("round", online, wire.encode_json({"v": wire.VERSION, "round": rnd, "run": self.run_id}), retain=True)
        if not self.pump(lambda: not reg.unready, self.limits.ready_timeout_s):   # O(1) per message
            log.info("round %d: %d of %d online devices answered within %.1f s", rnd, len(reg.answered(rnd)),
                     len(reg.online), self.limits.ready_timeout_s)
        self.rec.mark("ready")
        answered = reg.answered(rnd)
        self.progress(f"{len(answered)} of {len(online)} devices ready")
        return sorted(answered)

    def finish(self, params: list, acc, loss, state: tuple[dict, dict] | None, **fields) -> dict:
        """The round's metrics (what every round kind records, plus `fields`), stored in one
        transaction with the model and the round object's state."""
        rec, rnd = self.rec, self.rec.round
        up, down = self.bytes_up - rec.up0, self.bytes_down - rec.down0
        metrics = {"round": rnd, "accuracy": acc, "loss": loss, "wall_s": round(time.time() - rec.t0, 4), **fields,
                   "device_battery": {d: v["battery"] for d, v in sorted(self.registry.link.items()) if v["round"] == rnd},
                   "rejected": dict(rec.rejected), "late": dict(rec.late), "refused": dict(rec.refused),
                   "device_refused": dict(rec.device_refused), "device_errors": dict(rec.failed),
                   "device_evals": dict(rec.evals), "device_times_s": dict(rec.times),
                   "bytes_up": sum(up.values()), "bytes_down": sum(down.values()),
                   "device_bytes": {d: [up[d], down[d]] for d in sorted(set(up) | set(down))},
                   "phases_s": {k: round(v, 4) for k, v in rec.phases.items()}}
        self.store.finish_round(rnd, params, metrics, state)
        part = fields.get("participants", {})
        log.info("round %d: accuracy %s; merged %d FL, %d CL; %d B up, %d B down; %.1f s (%s); rejected %s", rnd,
                 "-" if acc is None else f"{100 * acc:.2f}%", len(part.get("fl", [])), len(part.get("cl", [])),
                 metrics["bytes_up"], metrics["bytes_down"], metrics["wall_s"],
                 ", ".join(f"{k} {v:.2f}" for k, v in metrics["phases_s"].items()), dict(rec.rejected) or "none")
        return metrics

    def run(self, rounds_obj, rounds: int, on_round=None, stop=None) -> list:
        """Run `rounds_obj` from the round after the last completed one (a restarted host resumes) to
        `rounds`, or until stop(metrics) says so after a round. The host's arithmetic runs on
        `limits.threads` BLAS threads, whatever the machine sets, so a run's bits do not depend on it."""
        from threadpoolctl import threadpool_limits

        self.handler = rounds_obj
        with threadpool_limits(limits=self.limits.threads):
            for rnd in range(self.store.last_completed_round() + 1, rounds + 1):
                m = rounds_obj.run(rnd)
                if on_round:
                    on_round(m)
                if stop and stop(m):
                    break
        return rounds_obj.params

    def stop_fleet(self) -> None:
        """Tell devices the run is over (not retained) and clear the retained announcement."""
        self.link.publish(wire.host_topic("round"), wire.encode_json({"v": wire.VERSION, "round": self.round, "stop": True}))
        self.link.publish(wire.host_topic("round"), b"", retain=True)
