"""Seeded sample selection that every runtime computes identically (CPython, MicroPython, numpy-free).

The host sends a seed in each task; the device picks its samples with `select(n, k, seed)`. Because
MicroPython's `random` differs from CPython's, the generator is specified here (xorshift32, see
docs/protocol.md) so the host can reproduce any device's choice bit for bit.
"""


def xorshift32(state):
    state ^= (state << 13) & 0xFFFFFFFF
    state ^= state >> 17
    state ^= (state << 5) & 0xFFFFFFFF
    return state & 0xFFFFFFFF


def select(n, k, seed):
    """First k indices of a Fisher-Yates shuffle of range(n) driven by xorshift32(seed); sorted.

    A partial shuffle: O(k) draws; memory is one `array('H'/'I')` of n on a device.
    """
    try:
        from array import array
    except ImportError:
        array = None
    idx = array("H" if n <= 0x10000 else "I", range(n)) if array else list(range(n))
    state = (seed & 0xFFFFFFFF) or 0x9E3779B9  # xorshift has a fixed point at 0
    k = min(k, n)
    for i in range(k):
        state = xorshift32(state)
        j = i + state % (n - i)
        idx[i], idx[j] = idx[j], idx[i]
    return sorted(idx[:k])


def ceil_fraction(n, fraction):
    """ceil(fraction * n) as the seed's code computes batch sizes, without float surprises."""
    k = int(fraction * n)
    return k + 1 if k < fraction * n else k
