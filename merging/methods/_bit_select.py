"""Exact order statistics of non-negative float32s from the halves of their bit patterns.

Non-negative floats order like their bits, so the k-th largest value is found by a histogram
of the high 16 bits (which bucket holds it) and one of the low 16 bits of that bucket's
elements. The SCE kernel keeps each element's high half (two bytes) from the
first pass, so the later passes recompute their values only for the few elements of the
buckets that matter.
"""

from __future__ import annotations

import torch
from torch import Tensor

HIGH_BUCKETS = 1 << 15  # high halves of non-negative float32 bit patterns (NaN included)
LOW_BUCKETS = 1 << 16


def high_half(values: Tensor) -> Tensor:
    """The high 16 bits of non-negative float32s, as int32 in [0, 2¹⁵) (a NaN's sign aside)."""
    return (values.view(torch.int32) >> 16) & 0x7FFF


def low_half(values: Tensor) -> Tensor:
    return values.view(torch.int32) & 0xFFFF


def kth_from_top(counts: Tensor, k: int) -> tuple[int, int]:
    """(the bucket holding the k-th largest element, that element's rank within the bucket
    from its top) for a histogram ``counts`` and 1 ≤ k ≤ counts.sum()."""
    above = counts.flip(0).cumsum(0).flip(0)  # above[b] = #elements in buckets ≥ b
    bucket = int((above >= k).nonzero().max())
    higher = int(above[bucket + 1]) if bucket + 1 < len(counts) else 0
    return bucket, k - higher


def from_halves(high: int, low: int) -> Tensor:
    """The float32 (a 0-d tensor) whose bit pattern is ``high:low``."""
    return torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32)[0]


__all__ = ["HIGH_BUCKETS", "LOW_BUCKETS", "from_halves", "high_half", "kth_from_top", "low_half"]
