"""Pure text functions of `megadoc generate`: rationale split points, preamble stripping, degenerate-output drops.

Split points: a document gets G split offsets at sentence or paragraph boundaries, each the boundary nearest (in
tokens) to an equal-token split into G + 1 pieces. `text[:o1] + text[o1:o2] + ... + text[oG:]` is the document,
so inserting rationale i at offset o_i keeps every original character.
"""

import bisect
import re

# A boundary is where the next sentence or paragraph starts: after end punctuation (and closing quotes or
# brackets) followed by whitespace, or after a blank line / line break.
_SENTENCE_END = re.compile(r"""[.!?][)"'\]\u201d\u2019]*\s+|\n\s*""")
_WORD_END = re.compile(r"\s+")

# Lines an instruct model opens with before the content ("Sure! Here is the rephrased article:").
_PREAMBLE = re.compile(
    r"""\A\s*(?:(?:sure|certainly|of course|okay|ok)\b[^\n]{0,40}?(?:[.!,:]\s*|\n)\s*)?"""
    r"""(?:(?:here(?:'s| is| are)|below is|the following is)\b[^\n]{0,120}?:[ \t]*\n+"""
    r"""|(?:rephrased article|article|simple version|questions and answers|latent thoughts?)\s*:[ \t]*\n*)""",
    re.IGNORECASE)
_LEADING_ACK = re.compile(r"\A\s*(?:sure|certainly|of course)[!.,][ \t]*\n+", re.IGNORECASE)

REPEAT_NGRAM = 4  # words per n-gram when measuring repetition
MIN_UNIQUE_NGRAM_FRACTION = 0.3  # fewer distinct 4-grams than this (over >= 40 words) is a degenerate loop
MIN_WORDS_FOR_REPEAT_CHECK = 40


def boundaries(text: str) -> list[int]:
    """Character offsets where a sentence or paragraph starts (excluding 0 and len(text))."""
    return sorted({m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)})


def _word_boundaries(text: str) -> list[int]:
    return [m.end() for m in _WORD_END.finditer(text) if 0 < m.end() < len(text)]


def split_offsets(text: str, token_starts: list[int], g: int) -> list[int] | None:
    """G increasing split offsets nearest to equal token counts, at sentence/paragraph boundaries.

    `token_starts` are the character offsets where the document's tokens start (from the model's tokenizer).
    Falls back to word boundaries when a document has fewer than G sentence boundaries; None when it has fewer
    than G word boundaries either (too short to carry G rationales).
    """
    candidates = boundaries(text)
    if len(candidates) < g:
        candidates = sorted(set(candidates) | set(_word_boundaries(text)))
    if len(candidates) < g:
        return None
    tokens_before = [bisect.bisect_left(token_starts, offset) for offset in candidates]
    total = len(token_starts)
    chosen: list[int] = []
    low = 0
    for i in range(1, g + 1):
        high = len(candidates) - (g - i)  # leave a candidate for each later split
        target = total * i / (g + 1)
        j = bisect.bisect_left(tokens_before, target, low, high)
        if j > low and (j == high or target - tokens_before[j - 1] <= tokens_before[j] - target):
            j -= 1
        chosen.append(candidates[j])
        low = j + 1
    return chosen


def pieces(text: str, offsets: list[int]) -> list[str]:
    """The G + 1 pieces the split offsets cut `text` into."""
    edges = [0, *offsets, len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:])]


def strip_preamble(text: str) -> str:
    """The generation without a chat preamble line ("Here is the rephrased article:") and outer whitespace."""
    text = _LEADING_ACK.sub("", text)
    return _PREAMBLE.sub("", text, count=1).strip()


def drop_reason(text: str) -> str | None:
    """Why a post-processed generation is unusable ('empty', 'repetitive'), or None to keep it."""
    if not text.strip():
        return "empty"
    words = text.split()
    if len(words) >= MIN_WORDS_FOR_REPEAT_CHECK:
        grams = [tuple(words[i:i + REPEAT_NGRAM]) for i in range(len(words) - REPEAT_NGRAM + 1)]
        if len(set(grams)) < MIN_UNIQUE_NGRAM_FRACTION * len(grams):
            return "repetitive"
    return None
