"""A/B assignment with exactly NGINX's ``split_clients`` arithmetic, so a listener lands in the same group
whether NGINX or the gateway assigns it.

NGINX hashes the key with MurmurHash2 (32 bit, seed 0: ``ngx_murmur_hash2``) and walks the parts in order,
each part's bound being the running sum of ``percent * 0xffffffff / 10000`` (percent in hundredths); ``*`` takes
the rest. No maintained Python package exposes MurmurHash2 (``mmh3`` is MurmurHash3), so it is written out here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmurhash2(data: bytes) -> int:
    """MurmurHash2, 32-bit, seed 0, little-endian blocks: what ``ngx_murmur_hash2`` computes."""
    length = len(data)
    h = length & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    if tail:
        for shift, byte in reversed(list(enumerate(tail))):
            h ^= byte << (8 * shift)
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@dataclass(frozen=True)
class Split:
    """Groups with their shares in hundredths of a percent (``5000`` = 50%); the last group takes the rest."""

    groups: tuple[str, ...]
    bounds: tuple[int, ...]  # upper hash bound of each group but the last, as NGINX computes them

    @classmethod
    def from_shares(cls, shares: Sequence[tuple[str, int]]) -> Split:
        if not shares:
            raise ValueError("an experiment needs at least one group")
        if sum(share for _, share in shares) != 10000:
            raise ValueError("group shares must add up to 100%")
        bounds, last = [], 0
        for _, share in shares[:-1]:
            last = (last + share * _MASK // 10000) & _MASK
            bounds.append(last)
        return cls(groups=tuple(name for name, _ in shares), bounds=tuple(bounds))

    def assign(self, key: str) -> str:
        h = murmurhash2(key.encode())
        for group, bound in zip(self.groups, self.bounds, strict=False):
            if h < bound:
                return group
        return self.groups[-1]
