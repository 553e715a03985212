# mypy: disable-error-code="misc"
"""The numba loop behind DELLA's compiled keep masks (`_della_fast`), imported lazily.

For each row, element j is kept when its 16-bit draw uᵢ is below T[rank_j], where rank_j is
the stable rank of its magnitude in the row and T the non-decreasing table of thresholds
round(pᵣ·2¹⁶) (computed by torch from the ranks 0…n−1, so the values are torch's). Sorting the
row is not needed for most elements: the magnitudes' bit patterns (non-negative floats order
like their bits) are counted into buckets of consecutive bit patterns, so an element of a
bucket holding the ranks [lo, hi) is kept if u < T[lo] and dropped if u ≥ T[hi − 1], whatever
its place inside the bucket. Only the rest (about bucket size × 2ε / n of the elements) need
their exact rank: it is counted among the members of their bucket (ties by position, as a
stable sort orders them), or, where many in one bucket need it, read off a stable sort of
the bucket's members (none needed when they all have one value, as bf16 ties often do).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, boundscheck=False)
FEW_ASKED = 12  # exact ranks by counting for up to this many in a bucket; a stable sort beyond


@_jit
def _bucket_shift(keys, row, n, bins_log2):  # type: ignore[no-untyped-def]
    low = keys[row, 0]
    high = low
    for j in range(1, n):
        k = keys[row, j]
        low = min(low, k)
        high = max(high, k)
    spread = high - low
    shift = 0
    while (spread >> np.uint32(shift)) >= np.uint32(1 << bins_log2):
        shift += 1
    return low, np.uint32(shift)


@_jit
def keep_rows(keys, draws, table, out):  # type: ignore[no-untyped-def]
    """keys: uint32[rows, n] (bit patterns of non-negative float32); draws: int32[rows, n];
    table: int32[n] (T[rank]); out: bool[rows, n] ← draws < T[stable rank of the key]."""
    rows, n = keys.shape
    bins_log2 = 8
    while (1 << bins_log2) < n and bins_log2 < 13:
        bins_log2 += 1
    bins = 1 << bins_log2
    count = np.zeros(bins, np.int32)
    start = np.empty(bins, np.int32)
    low = np.empty(bins, np.int32)
    high = np.empty(bins, np.int32)
    fill = np.empty(bins, np.int32)
    flagged = np.zeros(bins, np.uint8)
    asked = np.zeros(bins, np.int32)  # pending elements per flagged bucket
    pending = np.empty(n + 1, np.int32)
    bucket = np.empty(n, np.int32)
    member_keys = np.empty(n, np.uint32)
    member_index = np.empty(n, np.int32)
    exact = np.empty(n, np.int32)
    for row in range(rows):
        base, shift = _bucket_shift(keys, row, n, bins_log2)
        count[:] = 0
        for j in range(n):
            b = (keys[row, j] - base) >> shift
            bucket[j] = b
            count[b] += 1
        total = 0
        for b in range(bins):
            c = count[b]
            start[b] = total
            if c > 0:
                low[b] = table[total]
                high[b] = table[total + c - 1]
            total += c
        waiting = 0
        for j in range(n):  # branch-free: keep/drop is a coin flip the CPU cannot predict
            b = bucket[j]
            u = draws[row, j]
            first = low[b]
            out[row, j] = u < first
            pending[waiting] = j
            waiting += (u >= first) & (u < high[b])
        if waiting == 0:
            continue
        for p in range(waiting):
            b = bucket[pending[p]]
            if flagged[b] == 0:
                flagged[b] = 1
                fill[b] = start[b]
                asked[b] = 0
            asked[b] += 1
        for j in range(n):  # the flagged buckets' members, grouped by bucket, in position order
            b = bucket[j]
            if flagged[b] != 0:
                slot = fill[b]
                member_keys[slot] = keys[row, j]
                member_index[slot] = j
                fill[b] = slot + 1
        for p in range(waiting):
            b = bucket[pending[p]]
            if flagged[b] == 1 and asked[b] > FEW_ASKED:  # sort it once: ranks of all
                first = start[b]
                members = member_keys[first : first + count[b]]
                same = True
                for s in range(1, count[b]):
                    same = same and members[s] == members[0]
                if same:  # one value (ties are common in bf16 task vectors): position order
                    for s in range(count[b]):
                        exact[member_index[first + s]] = first + s
                else:
                    order = np.argsort(members, kind="mergesort")
                    for s in range(count[b]):
                        exact[member_index[first + order[s]]] = first + s
                flagged[b] = 2
        for p in range(waiting):
            j = pending[p]
            k = keys[row, j]
            b = bucket[j]
            if flagged[b] == 2:
                rank = exact[j]
            else:
                rank = start[b]
                for q in range(start[b], start[b] + count[b]):
                    other = member_keys[q]
                    if other < k or (other == k and member_index[q] < j):
                        rank += 1
            out[row, j] = draws[row, j] < table[rank]
        for p in range(waiting):
            flagged[bucket[pending[p]]] = 0
