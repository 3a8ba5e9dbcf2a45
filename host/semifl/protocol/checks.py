"""What a Pi-class device checks in every task the host sends it (docs/protocol.md §5, §5a, §5b), before
any field is used: every field with a rule (wherever it appears, `local` and `compression` included)
and those the task's role needs. A task that fails raises `wire.WireError("schema")`: the device logs
it and ignores the task. The MCU node checks its own few fields with `report.check` (this table would
cost its heap); both share `report.check` and `report.announcement`.
"""
from semifl.protocol.report import bad, check

U32 = 0xFFFFFFFF
# field -> (lo, hi, rule) as `report.check` takes them
RULES = {"round": (0, 1 << 53, 0), "task": (0, 1 << 53, 0), "seed": (0, U32, 0), "run": (0, U32, 0),
         "fresh": (0, U32, 0), "got": (0, 1 << 53, 0),
         "epochs": (0, 1000, 0), "batch": (1, 65536, 0), "batches": (0, 1 << 20, 0), "cut": (1, 64, 0),
         "imputed": (0, 1 << 24, 0), "steps": (1, 1 << 20, 0), "dim": (1, 4096, 0), "clusters": (0, 65536, 0),
         "fraction": (0, 1, 1), "lr": (0, 1000, 1), "deadline_s": (0, 1e6, 1), "prune": (0, 1, 2),
         "momentum": (0, 1, 2), "sigma": (0, 1e6, 3)}
NEED = {"fl": "seed", "cl": "seed fraction", "sl": "seed model cut batch lr", "generator": "seed steps sigma batch dim",
        "perfit": "seed run method model local settings", "personalize": "seed run method model local settings"}
DTYPES = ("float32", "float16", "int8")


def task(msg: dict, inner: bool = False) -> dict:
    """Check every field of a task that has a rule, and the fields its role needs. -> the task."""
    for k, x in msg.items():
        if k in RULES:
            check(msg, k, *RULES[k])
        elif k in ("role", "model", "method") and not (isinstance(x, str) and 0 < len(x) <= 64):
            bad(k, x)
        elif k in ("smashed", "dtype") and x not in DTYPES:
            bad(k, x)
        elif k in ("sparse", "upload") and not isinstance(x, bool):
            bad(k, x)
        elif k in ("local", "compression", "settings"):
            if not isinstance(x, dict):
                bad(k + " must be an object", x)
            if k != "settings":   # the method's own constructor arguments: perfit.make checks them
                task(x, True)
    if not inner:
        for k in ["round", "task", "role"] + NEED.get(msg.get("role"), "").split():
            if k not in msg:
                bad("missing " + k, None)
    return msg


def blob_meta(meta: dict) -> dict:
    """What a blob on the device's down topic must carry before a role sees it: an int round, a kind."""
    check(meta, "round")
    for k in ("task", "batch"):
        if k in meta:
            check(meta, k)
    if not isinstance(meta.get("kind"), str):
        bad("kind", meta.get("kind"))
    return meta

