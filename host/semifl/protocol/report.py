"""What a device reports (docs/protocol.md §4, §5): its capability report and its status messages;
and what it checks in every message the host sends it before using any of it (`announcement`, `task`:
types and ranges; a message that fails raises `wire.WireError("schema")`, which the device logs and
ignores, never acting on part of it).

MicroPython subset, like `wire.py`: the one builder and checker the MCU node and the Pi agent both use
(on a board this file is the flat module `report`).
"""
try:
    import wire
except ImportError:  # CPython: the host package
    from semifl.protocol import wire


def capabilities(dev_id, device_class, fw, ram, flash, cpu_score, battery, rssi, n_samples, hist, raw_ok, max_chunk,
                 roles, runtime, board, **extra):
    """The `caps` report (§4): the required fields, then optional ones (`ops`, `max_epsilon`, ...)."""
    caps = {"v": wire.VERSION, "id": dev_id, "class": device_class, "fw": fw, "proto": [wire.VERSION], "ram": ram,
            "flash": flash, "cpu_score": cpu_score, "battery": battery, "rssi": rssi, "n_samples": n_samples,
            "hist": hist, "raw_ok": raw_ok, "max_chunk": max_chunk, "roles": roles, "runtime": runtime, "board": board}
    for k in extra:
        caps[k] = extra[k]
    return caps


def status(kind, rnd, **fields):
    """A status message (§5): `ready`, `trained`, `eval`, `error`, `phase`, `personal`, `request`, ..."""
    msg = {"v": wire.VERSION, "kind": kind, "round": rnd}
    for k in fields:
        msg[k] = fields[k]
    return msg


def histogram(labels, n_classes):
    """Samples per class of an iterable of integer labels (what `caps.hist` carries)."""
    hist = [0] * n_classes
    for b in labels:
        if b < n_classes:
            hist[b] += 1
    return hist


# --- what a device checks in the host's messages (small: an MCU holds this in its heap) ----------
def bad(what, value):
    raise wire.WireError("schema", "%s: %s" % (what, repr(value)[:40]))


def check(msg, key, lo=0, hi=1 << 53, rule=0):
    """`msg[key]` -> itself if rule 0: an int (not a bool) in [lo, hi]; 1: a finite number in (lo, hi];
    2: in [lo, hi); 3: in [lo, hi]. Else WireError("schema")."""
    x = msg.get(key)
    if (isinstance(x, bool) or not isinstance(x, (int, float) if rule else int) or not lo <= x <= hi
            or (rule == 1 and x == lo) or (rule == 2 and x == hi)):
        bad(key + " out of range", x)   # NaN compares false, the infinities fall outside [lo, hi]
    return x


def announcement(msg):
    """A `host/round` message -> ("stop", round) for the exact `"stop": true`, else ("round", r): a
    round that is not a non-negative int, or any other `stop` (1, "yes"), is refused."""
    if "stop" in msg:
        if msg["stop"] is not True:
            bad("stop must be exactly true", msg["stop"])
        return "stop", msg.get("round")
    return "round", check(msg, "round")
