"""Seeds derived from (seed, epoch, rank, ...), so randomness is a pure function of where a
run is: every rank draws the same graph dropout, and a restart needs no generator state."""

from __future__ import annotations


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (FNV-1a over 64-bit words): stable across runs and machines."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 64)
    return h >> 1
