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

The buckets cover the row's top `SPAN` binades (bit patterns below go to the first bucket):
a zero or a tiny magnitude would otherwise stretch the range and crowd the rest into a few
large buckets. Eight binades (less one pattern, so 2048- and 5632-element rows get buckets
of 2¹⁶ and 2¹⁴ patterns) left the fewest undecided elements on bf16 task vectors of a 1B
Llama: ~1.4 a row, against 2.5 and 5 with six binades, the first bucket's small magnitudes
most of them; wider buckets mix values. Which bucket an element lands in never changes a
decision, only how often its exact rank is needed. A draw below T[0] keeps and one from
T[n − 1] on drops whatever the rank, so only the others (2ε of them) look at their bucket; in
a bucket whose keys are all equal the place among its members (counted in position order) is
the exact rank; and a few pending elements are ranked by comparing them with the whole row
instead of grouping the buckets' members.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, boundscheck=False)
FEW_ASKED = 12  # exact ranks by counting for up to this many in a bucket; a stable sort beyond
EMPTY, MIXED = np.uint32(0xFFFFFFFE), np.uint32(0xFFFFFFFF)  # never keys (no sign bit set)
SPAN = np.uint32((8 << 23) - 1)  # bit patterns of the top 8 binades: the bucketed range


@_jit
def bins_log2(n: int) -> int:
    """log₂ of the buckets for rows of n: about one per two elements, 256 to 8,192."""
    log2 = 8
    while (2 << log2) < n and log2 < 13:
        log2 += 1
    return log2


def scratch(n: int) -> tuple[Any, ...]:
    """The work arrays of `keep_row` for rows of up to n elements (reused row after row)."""
    bins = 1 << bins_log2(n)
    return (
        np.zeros((6, bins), np.int32),  # count, start, pure, extra, fill, asked
        np.zeros(bins, np.uint8),  # flagged
        np.empty((5, n + 1), np.int32),  # pending, bucket, member index, exact rank, within
        np.empty(max(n, bins), np.uint32),  # member keys (first: each bucket's one key or MIXED)
    )


@_jit
def extremes(keys: Any) -> Any:
    top = keys[0]
    bottom = keys[0]
    for j in range(1, keys.size):
        top = max(top, keys[j])
        bottom = min(bottom, keys[j])
    return top, bottom


@_jit
def _scan_rank(keys: Any, j: int) -> int:
    """The stable rank of keys[j] by comparing it with every key of the row (vectorised)."""
    k = keys[j]
    rank = np.uint32(0)  # (uint32 lanes, rows < 2³¹: numba widens bool sums to int64)
    for q in range(j):
        rank = np.uint32(rank + np.uint32(keys[q] <= k))
    for q in range(j + 1, keys.size):
        rank = np.uint32(rank + np.uint32(keys[q] < k))
    return np.int64(rank)


@_jit
def keep_row(keys: Any, draws: Any, table: Any, out: Any, top: Any, bottom: Any, work: Any,
             flagged: Any, slots: Any, member_keys: Any) -> None:  # fmt: skip
    """out[j] ← draws[j] < table[stable rank of keys[j]] for one row (``scratch``'s arrays;
    ``top``/``bottom``: the largest and smallest key)."""
    n = keys.size
    bins = 1 << bins_log2(n)
    count, start, pure, extra, fill, asked = work[0], work[1], work[2], work[3], work[4], work[5]
    pending, bucket, member_index, exact, within = slots[0], slots[1], slots[2], slots[3], slots[4]
    floor = top - SPAN if top - bottom > SPAN else bottom
    shift = np.uint32(0)
    while ((top - floor) >> shift) >= np.uint32(bins):
        shift += np.uint32(1)
    count[:bins] = 0
    last = member_keys[:bins]  # the bucket's one key so far, EMPTY, or MIXED once two differ
    last[:] = EMPTY
    candidates = exact  # (until the decisions: the elements whose rank decides)
    t_low, t_high = table[0], table[n - 1]
    waiting = 0
    for j in range(n):  # (vectorised) buckets; below T[0]: kept, from T[n − 1] on: dropped
        k = keys[j]
        bucket[j] = np.int32((k - floor) >> shift) if k > floor else np.int32(0)
        u = np.int32(draws[j])
        out[j] = u < t_low
        candidates[j] = np.int32((u >= t_low) & (u < t_high))  # (the flag, then the list)
    for j in range(n):  # place among the bucket's members, whether they all agree; candidates
        k = keys[j]
        b = bucket[j]
        c = count[b]
        within[j] = c
        count[b] = c + 1
        held = last[b]  # (no use of the count: two independent chains through memory)
        last[b] = k if (held == k) | (held == EMPTY) else MIXED
        flag = candidates[j]  # (read before the list, which is never ahead of j, overwrites it)
        candidates[waiting] = j
        waiting += flag
    for b in range(bins):  # (vectorised)
        one = last[b] != MIXED
        pure[b] = one
        extra[b] = 0 if one else count[b] - 1
    total = 0
    for b in range(bins):
        start[b] = total
        total += count[b]
    asked_for = waiting
    waiting = 0
    for p in range(asked_for):  # branch-free: keep/drop is a coin flip the CPU cannot predict
        j = candidates[p]
        b = bucket[j]
        lo = start[b] + within[j] * pure[b]  # a bucket of equal keys: the exact rank
        u = np.int32(draws[j])
        first = table[lo]
        out[j] = u < first
        pending[waiting] = j
        waiting += (u >= first) & (u < table[lo + extra[b]])
    if waiting == 0:
        return
    if waiting * 512 <= n:  # a few: each compared with the whole row
        for p in range(waiting):
            j = pending[p]
            out[j] = np.int32(draws[j]) < table[_scan_rank(keys, j)]
        return
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
            member_keys[slot] = keys[j]
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
        k = keys[j]
        b = bucket[j]
        if flagged[b] == 2:
            rank = exact[j]
        else:
            rank = start[b]
            for q in range(start[b], start[b] + count[b]):
                other = member_keys[q]
                if other < k or (other == k and member_index[q] < j):
                    rank += 1
        out[j] = np.int32(draws[j]) < table[rank]
    for p in range(waiting):
        flagged[bucket[pending[p]]] = 0


@_jit
def keep_rows(keys: Any, draws: Any, table: Any, out: Any, work: Any, flagged: Any,
              slots: Any, member_keys: Any) -> None:  # fmt: skip
    """keys: uint32[rows, n] (bit patterns of non-negative float32); draws: int32[rows, n];
    table: int32[n] (T[rank]); out: bool[rows, n] ← draws < T[stable rank of the key]."""
    for row in range(keys.shape[0]):
        top, bottom = extremes(keys[row])
        keep_row(keys[row], draws[row], table, out[row], top, bottom, work, flagged, slots,
                 member_keys)  # fmt: skip
