"""Re-segmentation of a talk's unsegmented translation to its reference segments.

A stream is translated whole, so its output has no sentence boundaries of its own; to be
scored per sentence (sacrebleu) and per sentence latency (as the IWSLT simultaneous
track's StreamLAAL does), its words are re-aligned to the reference segments by edit
distance, as mwerSegmenter does: one Levenshtein alignment of the hypothesis against the
references laid end to end; a hypothesis word aligned to a reference word (match or
substitution) goes to that word's segment, an inserted word to the segment of the last
aligned word before it (the first segment if there is none). Every segment receives a
contiguous, possibly empty, run of hypothesis words, in order.

Among alignments of equal edit distance (a poor hypothesis has many: which reference
words are the deleted ones?) the one nearest the proportional diagonal wins: each
aligned pair costs a tie-break of ``|i/|hyp| - j/|ref||`` scaled far below one edit, so
a hypothesis with little in common with its references is spread over the talk, not
piled onto its last segments.

Words are compared lowercased without the punctuation at their edges. ``units`` says
what a word is: space-separated words, or characters for ja and zh (no spaces).
"""

from __future__ import annotations

import string
from typing import Sequence

CJK_LANGS = frozenset({"ja", "zh"})
_EDGE = string.punctuation + "，。、！？；：「」『』（）《》“”‘’…—·"


def units(text: str, lang: str) -> list[str]:
    """The latency and alignment units of ``text``: characters (not spaces) in ja/zh, else words."""
    if lang in CJK_LANGS:
        return [c for c in text if not c.isspace()]
    return text.split()


def join_units(words: Sequence[str], lang: str) -> str:
    return ("" if lang in CJK_LANGS else " ").join(words)


def _norm(word: str) -> str:
    w = word.lower().strip(_EDGE)
    return w or word.lower()


def resegment(hyp: Sequence[str], refs: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """For each reference segment, the ``(start, end)`` slice of ``hyp`` words it receives."""
    if not refs:
        raise ValueError("resegment: no reference segments")
    flat = [_norm(w) for ref in refs for w in ref]
    seg_of = [k for k, ref in enumerate(refs) for _ in ref]
    h = [_norm(w) for w in hyp]
    n, m = len(h), len(flat)
    tie = 1.0 / (4 * (n + m + 1))  # the whole path's tie-breaks sum to less than one edit
    # cost[i][j]: edits to turn hyp[:i] into flat[:j]; back[i][j]: 0 diagonal, 1 insertion (hyp word
    # unaligned), 2 deletion (reference word unaligned)
    prev = [float(j) for j in range(m + 1)]
    back = [[2] * (m + 1)]
    for i in range(1, n + 1):
        cur = [float(i)] + [0.0] * m
        row = [1] + [0] * m
        hi = h[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (hi != flat[j - 1]) + tie * abs(i / n - j / m)
            ins = prev[j] + 1
            dele = cur[j - 1] + 1
            if diag <= ins and diag <= dele:
                cur[j], row[j] = diag, 0
            elif ins <= dele:
                cur[j], row[j] = ins, 1
            else:
                cur[j], row[j] = dele, 2
        back.append(row)
        prev = cur
    owner = [-1] * n  # the segment of each hypothesis word (-1: an insertion, decided below)
    i, j = n, m
    while i > 0:
        step = back[i][j] if j > 0 else 1
        if step == 0:
            owner[i - 1] = seg_of[j - 1]
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    last = 0
    for k in range(n):  # insertions join the segment of the aligned word before them
        if owner[k] < 0:
            owner[k] = last
        last = owner[k]
    for k in range(1, n):  # keep the runs contiguous and in order
        owner[k] = max(owner[k], owner[k - 1])
    spans = []
    pos = 0
    for s in range(len(refs)):
        end = pos
        while end < n and owner[end] == s:
            end += 1
        spans.append((pos, end))
        pos = end
    return spans
