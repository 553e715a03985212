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
the bucket's members.

The buckets cover the row's top `SPAN` binades (bit patterns below go to the first bucket):
a zero or a tiny magnitude would otherwise stretch the range and crowd the rest into a few
large buckets. Eight binades (less one pattern, so 2048- and 5632-element rows get buckets
of 2¹⁶ and 2¹⁴ patterns) left the fewest undecided elements on bf16 task vectors of a 1B
Llama: ~1.4 a row, against 2.5 and 5 with six binades, the first bucket's small magnitudes
most of them; wider buckets mix values. Which bucket an element lands in never changes a
decision, only how often its exact rank is needed.

The passes of `keep_row`: (1, vectorised) each element's bucket, the decision of the draws
below T[0] (kept) or from T[n − 1] on (dropped) whatever the rank, and a flag on the others
(2ε of them, the candidates); (2, `_count`) one uint64 per bucket, its count (low half) and
its one key so far or `MIXED` (high half), each element's place among its bucket's members
(counted in position order), and the candidates' list, each with that place; (3) the counts
become each bucket's first rank (low half) and, where its keys differ, count − 1 (high half);
(4) each candidate's decision from its bucket's rank range — in a bucket of equal keys (ties
are common in bf16 task vectors) its place there gives the exact rank; (5) the few still
pending are ranked by comparing them with the whole row (`_scan_rank`), or, where there are
many, by grouping their buckets' members (`_group_rank`).

Rows of 1,025 to 65,535 elements take buckets of at most 2¹⁶ patterns, about one per four
elements (`_rank_even`: 1,024 for rows of 2,048, 2,048 for 5,632; on real task vectors the
fewest pending elements and buckets to add up together). |δ| of bf16 weights is mostly an
even key (the low 16 bits zero; ~95 % of a 1B Llama's task vectors), and two even keys never
share such a bucket, so a bucket holds one key unless it holds an odd key (or is the first).
Pass 2 (`_count_even`) then counts each bucket's members and odd members in one uint32, with
no key comparison, and pass 3 takes a bucket with an odd member as a range of ranks (also
where its keys are all one odd key: only more pending, never another decision).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, boundscheck=False)
FEW_ASKED = 12  # exact ranks by counting for up to this many in a bucket; a stable sort beyond
SCAN_SHARE = 64  # pending elements are each scanned against the row while pending·64 <= n
LOW = np.uint64(0xFFFFFFFF)  # the low half of a bucket's word
HALF = np.uint64(32)
MIXED = np.uint64(0xFFFFFFFF)  # high half of a bucket's word: its keys differ (never a key)
SPAN = np.uint32((8 << 23) - 1)  # bit patterns of the top 8 binades: the bucketed range
EVEN = np.uint32(0xFFFF)  # the low bits of a key: zero in an even key
EVEN_SHIFT = 16  # buckets up to 2¹⁶ patterns wide: one even key at most in each
EVEN_BINS = 1 << 10  # the fewest buckets of `_rank_even`'s rows (8 binades, 2¹⁶ patterns each)
EVEN_ROW = 0xFFFF  # rows up to this long: index and place fit 16 bits each
PLACE = np.uint64(0xFFFF)  # `_count_even`'s entries: index, place (16 bits each), bucket


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
        np.zeros(bins, np.uint64),  # per bucket: count | key or MIXED, then first rank | extra
        np.empty(n + 1, np.uint16),  # each element's bucket
        np.empty(n + 1, np.uint8),  # each element's candidate flag
        np.empty(n + 1, np.uint64),  # the candidates: index | place in the bucket
        np.empty(n + 1, np.int32),  # the pending elements
        np.zeros(bins, np.uint8),  # (grouping) flagged buckets
        np.zeros((2, bins), np.int32),  # (grouping) fill, asked
        np.empty((2, n + 1), np.int32),  # (grouping) member index, exact rank
        np.empty(n + 1, np.uint32),  # (grouping) member keys
        np.zeros(bins, np.uint32),  # (even keys) per bucket: count | odd keys << 16
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
    """The stable rank of keys[j] by comparing it with every key of the row (vectorised: both
    loops index views from 0, which LLVM reads as contiguous vectors)."""
    k = keys[j]
    rank = np.uint32(0)  # (uint32 lanes, rows < 2³¹: numba widens bool sums to int64)
    head = keys[:j]
    for q in range(head.size):
        rank = np.uint32(rank + np.uint32(head[q] <= k))
    tail = keys[j + 1 :]
    for q in range(tail.size):
        rank = np.uint32(rank + np.uint32(tail[q] < k))
    return np.int64(rank)


@_jit
def _count(keys: Any, bucket: Any, flags: Any, words: Any, candidates: Any) -> int:
    """Pass 2 of `keep_row` (a loop of its own: fewer live values, no spills): each bucket's
    count and key (or MIXED), and the flagged elements as index | earlier members of their
    bucket; returns how many. (The list's slot is written for every element, and only
    advanced past a candidate: no branch on a coin flip.)"""
    waiting = 0
    for j in range(keys.size):
        k = np.uint64(keys[j])
        b = bucket[j]
        word = words[b]
        count = word & LOW
        same = ((word >> HALF) == k) | (count == np.uint64(0))
        words[b] = ((k if same else MIXED) << HALF) | (count + np.uint64(1))
        candidates[waiting] = np.uint64(j) | (word << HALF)
        waiting += flags[j]
    return waiting


@_jit
def _group_rank(
    keys: Any, draws: Any, table: Any, out: Any, words: Any, bucket: Any, pending: Any,
    flagged: Any, marks: Any, group: Any, member_keys: Any,
) -> None:  # fmt: skip
    """The exact ranks of many pending elements (all in buckets of mixed keys): their buckets'
    members are grouped by bucket in position order, then each is counted among its bucket's
    members, or read off a stable sort of a bucket where more than `FEW_ASKED` ask."""
    fill, asked = marks[0], marks[1]
    member_index, exact = group[0], group[1]
    for p in range(pending.size):
        b = bucket[pending[p]]
        if flagged[b] == 0:
            flagged[b] = 1
            fill[b] = np.int32(words[b] & LOW)
            asked[b] = 0
        asked[b] += 1
    for j in range(keys.size):  # the flagged buckets' members by bucket, in position order
        b = bucket[j]
        if flagged[b] != 0:
            slot = fill[b]
            member_keys[slot] = keys[j]
            member_index[slot] = j
            fill[b] = slot + 1
    for p in range(pending.size):
        b = bucket[pending[p]]
        if flagged[b] == 1 and asked[b] > FEW_ASKED:  # sort it once: ranks of all
            first = np.int64(words[b] & LOW)
            count = np.int64(words[b] >> HALF) + 1
            order = np.argsort(member_keys[first : first + count], kind="mergesort")
            for s in range(count):
                exact[member_index[first + order[s]]] = first + s
            flagged[b] = 2
    for p in range(pending.size):
        j = pending[p]
        k = keys[j]
        b = bucket[j]
        if flagged[b] == 2:
            rank = np.int64(exact[j])
        else:
            first = np.int64(words[b] & LOW)
            rank = first
            for q in range(first, first + np.int64(words[b] >> HALF) + 1):
                other = member_keys[q]
                if other < k or (other == k and member_index[q] < j):
                    rank += 1
        out[j] = np.int32(draws[j]) < table[rank]
    for p in range(pending.size):
        flagged[bucket[pending[p]]] = 0


@_jit
def _count_even(bucket: Any, flags: Any, counts: Any, candidates: Any) -> int:
    """`_rank_even`'s count: per bucket one uint32, its count (low half) and how many of its
    members have odd keys (flag bit 1; high half), and the candidates (flag bit 0) as index |
    earlier members of their bucket << 16 | bucket << 32; returns how many. (Every element
    writes the list's next slot, only a candidate advances it: no branch on a coin flip.)"""
    waiting = np.uint64(0)  # (unsigned indices: no wraparound check per element)
    for j in range(bucket.size):
        b = np.uint64(bucket[j])
        word = counts[b]
        f = np.uint32(flags[j])
        counts[b] = word + (np.uint32(1) | ((f >> np.uint32(1)) << np.uint32(16)))
        place = np.uint64(word & np.uint32(0xFFFF))
        candidates[waiting] = np.uint64(j) | (place << np.uint64(16)) | (b << HALF)
        waiting += np.uint64(f & np.uint32(1))
    return np.int64(waiting)


@_jit
def _rank_even(keys: Any, draws: Any, t_low: Any, span: Any, floor: Any, shift: Any, bins: int,
               out: Any, work: Any) -> int:  # fmt: skip
    """Passes 1 to 3 of `keep_row` where its buckets are at most 2¹⁶ patterns wide
    (`EVEN_SHIFT`) and rows at most `EVEN_ROW` long: an even key (low 16 bits zero, as most
    |δ| of bf16 values are) shares its bucket with no other even key, so a bucket holds one
    key unless it holds an odd key (or is the first bucket, which also takes every key below
    the bucketed range). Pass 2 is then a plain count (`_count_even`) instead of comparing
    each element's key with its bucket's. Leaves the words as those passes do, the candidates
    as `_count_even` lists them; returns how many."""
    words, bucket, flags, candidates = work[0], work[1], work[2], work[3]
    counts = work[9]
    n = keys.size
    narrow = shift & np.uint32(31)  # (a shift LLVM knows is below 32: 32-bit vector lanes)
    for j in range(n):  # (vectorised) buckets, the sure decisions, candidate and odd flags
        k = keys[j]
        bucket[j] = np.uint16(np.uint32(k - floor) >> narrow) if k > floor else np.uint16(0)
        u = np.int32(draws[j])
        out[j] = u < t_low
        odd_key = np.uint8((k & EVEN) != np.uint32(0)) << np.uint8(1)
        flags[j] = np.uint8(np.uint32(u - t_low) < span) | odd_key
    row_counts = counts[:bins]
    row_counts[:] = 0
    asked_for = _count_even(bucket[:n], flags, row_counts, candidates)
    row_counts[0] |= np.uint32(1 << 31)  # (the first bucket also takes the keys below the range)
    total = np.uint64(0)
    for b in range(bins):  # first rank | (count − 1 where the bucket may hold several keys)
        word = row_counts[b]
        count = np.uint64(word & np.uint32(0xFFFF))
        extra = count - np.uint64(1) if word > np.uint32(0xFFFF) else np.uint64(0)
        words[b] = total | (extra << HALF)
        total += count
    return asked_for


@_jit
def _decide_even(candidates: Any, words: Any, draws: Any, table: Any, out: Any,
                 pending: Any) -> int:  # fmt: skip
    """Pass 4 of `keep_row` on `_count_even`'s entries (the bucket read from the entry, not
    looked up by index); returns how many are pending."""
    waiting = np.uint64(0)
    for p in range(candidates.size):  # branch-free, as in `keep_row`
        entry = candidates[p]
        j = entry & PLACE
        word = words[entry >> HALF]
        extra = word >> HALF
        place = (entry >> np.uint64(16)) & PLACE
        lo = (word & LOW) + (place if extra == np.uint64(0) else np.uint64(0))
        u = np.int32(draws[j])
        first = table[lo]
        out[j] = u < first
        pending[waiting] = j
        waiting += np.uint64((u >= first) & (u < table[lo + extra]))
    return np.int64(waiting)


@_jit
def keep_row(keys: Any, draws: Any, table: Any, out: Any, top: Any, bottom: Any,
             work: Any) -> None:  # fmt: skip
    """out[j] ← draws[j] < table[stable rank of keys[j]] for one row (``work``: `scratch`'s
    arrays; ``top``/``bottom``: the largest and smallest key). The passes: module docstring."""
    words, bucket, flags, candidates, pending, flagged, marks, group, member_keys = work[:9]
    n = keys.size
    even = EVEN_BINS < n <= EVEN_ROW
    bins = 1 << bins_log2(n)
    if even:  # (half as many: about one per four elements, 2¹⁶ patterns wide at most)
        bins = max(EVEN_BINS, bins >> 1)
    floor = top - SPAN if top - bottom > SPAN else bottom
    shift = np.uint32(0)
    while ((top - floor) >> shift) >= np.uint32(bins):
        shift += np.uint32(1)
    row_words = words[:bins]
    t_low = table[0]
    span = np.uint32(table[n - 1] - t_low)
    if even and shift <= EVEN_SHIFT:
        asked_for = _rank_even(keys, draws, t_low, span, floor, shift, bins, out, work)
        waiting = _decide_even(candidates[:asked_for], row_words, draws, table, out, pending)
    else:
        row_words[:] = 0
        narrow = shift & np.uint32(31)  # (as in `_rank_even`)
        for j in range(n):  # (vectorised) buckets; below T[0]: kept, from T[n − 1] on: dropped
            k = keys[j]
            bucket[j] = np.uint16(np.uint32(k - floor) >> narrow) if k > floor else np.uint16(0)
            u = np.int32(draws[j])
            out[j] = u < t_low
            flags[j] = np.uint32(u - t_low) < span
        asked_for = _count(keys, bucket, flags, row_words, candidates)
        total = np.uint64(0)
        for b in range(bins):  # count | key → first rank | (count − 1 where the keys differ)
            word = row_words[b]
            count = word & LOW
            mixed = (word >> HALF) == MIXED
            row_words[b] = total | ((count - np.uint64(1) if mixed else np.uint64(0)) << HALF)
            total += count
        waiting = 0
        for p in range(asked_for):  # branch-free: keep/drop is a coin flip the CPU cannot predict
            entry = candidates[p]
            j = np.int64(entry & LOW)
            word = row_words[bucket[j]]
            extra = word >> HALF
            lo = (word & LOW) + ((entry >> HALF) if extra == np.uint64(0) else np.uint64(0))
            u = np.int32(draws[j])
            first = table[lo]
            out[j] = u < first
            pending[waiting] = j
            waiting += (u >= first) & (u < table[lo + extra])
    if waiting * SCAN_SHARE <= n:  # a few: each compared with the whole row
        for p in range(waiting):
            j = pending[p]
            out[j] = np.int32(draws[j]) < table[_scan_rank(keys, j)]
        return
    _group_rank(keys, draws, table, out, row_words, bucket, pending[:waiting], flagged, marks,
                group, member_keys)  # fmt: skip


@_jit
def keep_rows(keys: Any, draws: Any, table: Any, out: Any, work: Any) -> None:
    """keys: uint32[rows, n] (bit patterns of non-negative float32); draws: int32[rows, n];
    table: int32[n] (T[rank]); out: bool[rows, n] ← draws < T[stable rank of the key]."""
    for row in range(keys.shape[0]):
        top, bottom = extremes(keys[row])
        keep_row(keys[row], draws[row], table, out[row], top, bottom, work)
