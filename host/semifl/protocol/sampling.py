"""Seeded sample selection that every runtime computes identically (CPython, MicroPython, numpy-free).

The host sends a seed in each task; the device picks its samples with `select(n, k, seed)`. Because
MicroPython's `random` differs from CPython's, the generator is specified here (xorshift32, see
docs/protocol.md) so the host can reproduce any device's choice bit for bit.
"""
import sys

_MICROPYTHON = sys.implementation.name == "micropython"


def xorshift32(state):
    state ^= (state << 13) & 0xFFFFFFFF
    state ^= state >> 17
    state ^= (state << 5) & 0xFFFFFFFF
    return state & 0xFFFFFFFF


def select(n, k, seed):
    """First k indices of a Fisher-Yates shuffle of range(n) driven by xorshift32(seed); ascending.

    A partial shuffle: O(k) draws. Memory on a device: an `array` of n indices plus an n-byte mark map,
    no list of k boxed ints (sorting one in a 110 KB ESP32 heap fails for k in the thousands). Returns
    a memoryview of the k indices on MicroPython, a list in CPython (where callers compare and index).
    """
    from array import array

    code = "H" if n <= 0x10000 else "I"
    idx = array(code, range(n))
    state = (seed & 0xFFFFFFFF) or 0x9E3779B9  # xorshift has a fixed point at 0
    k = min(k, n)
    for i in range(k):
        state = xorshift32(state)
        j = i + state % (n - i)
        idx[i], idx[j] = idx[j], idx[i]
    mark = bytearray(n)
    for i in range(k):
        mark[idx[i]] = 1
    w = 0
    for i in range(n):   # ascending order without a sort: write the marked indices back in place
        if mark[i]:
            idx[w] = i
            w += 1
    # a view, not a slice: a copy would need a second contiguous block of up to 12 KB on the device
    return memoryview(idx)[:k] if _MICROPYTHON else list(idx[:k])


def ceil_fraction(n, fraction):
    """ceil(fraction * n) as the seed's code computes batch sizes, without float surprises."""
    k = int(fraction * n)
    return k + 1 if k < fraction * n else k
