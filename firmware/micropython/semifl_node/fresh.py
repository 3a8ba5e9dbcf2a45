"""The fresh-samples rule on the node (docs/protocol.md §5): of a CL task's selection, only the samples
not in an upload the host holds. Imported with the first task that asks, so a node never asked keeps the
heap it had. Two bitsets of the node's n samples: `sent` (held by the host) and `unconf` (the latest
upload, until a task's `got` names its round)."""


class Fresh:
    def __init__(self, fid, n):
        self.id, self.sent, self.unconf, self.unconf_round = fid, bytearray((n + 7) >> 3), None, -1


def only_fresh(node, task, idx):
    """-> the indices of `idx` (select's memoryview, kept in place at its front) the host does not hold.
    A task with another `fresh` id (another run) forgets both sets; asked again for the same round, the
    same samples go again."""
    f = node.fresh
    if f is None or f.id != task["fresh"]:
        f = node.fresh = Fresh(task["fresh"], node.n)
    sent = f.sent
    if f.unconf is not None and f.unconf_round == task.get("got", 0):
        u = f.unconf
        for j in range(len(sent)):
            sent[j] |= u[j]
    u = f.unconf = bytearray(len(sent))
    f.unconf_round = task["round"]
    w = 0
    for i in idx:
        if not sent[i >> 3] & (1 << (i & 7)):
            idx[w] = i
            w += 1
            u[i >> 3] |= 1 << (i & 7)
    return idx[:w]
