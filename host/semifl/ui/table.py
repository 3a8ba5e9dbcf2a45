"""The fleet table as the page asks for it: filtered, sorted and cut to one page on the server, so a
browser holds at most a page of rows whatever the fleet's size."""
from __future__ import annotations

# the columns a row has (a source fills what it knows; None: not known); the page shows them in this order
COLUMNS = ("id", "class", "runtime", "board", "role", "now", "online", "last_seen", "battery", "rssi",
           "bytes_up", "bytes_down", "joules", "int8_accuracy", "personal_accuracy", "values_up", "values_down",
           "rejected")
MAX_LIMIT = 1000


def _key(col: str):
    """Sort key of a column: numbers as numbers, text as text, unknown values last either way."""
    def key(row):
        v = row.get(col)
        if col == "rejected":
            v = sum(v.values()) if v else 0
        if v is None:
            return (1, 0, "")
        if isinstance(v, bool):
            return (0, int(v), "")
        if isinstance(v, (int, float)):
            return (0, v, "")
        return (0, 0, str(v))
    return key


def matches(row: dict, q: str) -> bool:
    """A filter word matches a row whose id, class, runtime, board, role, this round's role or a rejection
    reason contains it; `key:value` matches one column exactly (e.g. `role:cl`, `online:false`)."""
    if ":" in q:
        col, _, want = q.partition(":")
        v = row.get(col.strip())
        if isinstance(v, dict):
            return want.strip() in v
        return str(v).lower() == want.strip().lower()
    hay = " ".join(str(row.get(c) or "") for c in ("id", "class", "runtime", "board", "role", "now"))
    hay += " " + " ".join(row.get("rejected") or {})
    return q.lower() in hay.lower()


def page(rows: list[dict], q: str = "", online: str = "", sort: str = "id", desc: bool = False,
         offset: int = 0, limit: int = 100) -> dict:
    """-> {"total", "matched", "offset", "rows"}: the rows matching every word of `q` (and `online`:
    "online"/"offline"/""), sorted by `sort`, rows[offset:offset + limit]. O(n log n) per call."""
    total = len(rows)
    words = q.split()
    if words:
        rows = [r for r in rows if all(matches(r, w) for w in words)]
    if online in ("online", "offline"):
        rows = [r for r in rows if bool(r.get("online")) == (online == "online")]
    if sort not in COLUMNS:
        sort = "id"
    known = [r for r in rows if _key(sort)(r)[0] == 0]
    unknown = [r for r in rows if _key(sort)(r)[0] == 1]   # unknown values last in both directions
    known.sort(key=_key(sort), reverse=desc)
    rows = known + sorted(unknown, key=_key("id"))
    offset = max(0, int(offset))
    limit = max(1, min(int(limit), MAX_LIMIT))
    return {"total": total, "matched": len(rows), "offset": offset, "rows": rows[offset:offset + limit]}
