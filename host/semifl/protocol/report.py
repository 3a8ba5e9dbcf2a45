"""What a device reports (docs/protocol.md §4, §5): its capability report and its status messages.

MicroPython subset, like `wire.py`: the one builder the MCU node and the Pi agent both use (on a
board this file is the flat module `report`).
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
