"""The requests of one chunk: each document's prompt(s), fitted to the model's context.

rephrase   one request per document, sampled G times (`SamplingParams(n=G)`).
rationale  one request per split point (G per document, `postprocess.split_offsets`), conditioned on the full
           prefix and the full suffix; the G requests of a document share its opening tokens, so vLLM's prefix
           caching prefills them once.

Context policy: a prompt that does not fit `budget` tokens (the context minus max_tokens) is cut to fit (rephrase:
the document's first tokens are kept; rationale: the end of the prefix and the start of the suffix, so the text at
the split point is always seen) and the request says `truncated`. benchmarks/bench_generate.py renders its bare-vLLM
prompts with these same functions.
"""

from collections import Counter
from dataclasses import dataclass

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import Document
from megadoc.preprocess.generate.postprocess import split_offsets
from megadoc.preprocess.generate.prompts import PromptTemplate


@dataclass
class Request:
    """One prompt of one document: G samples of a rephrase, or the rationale for one split point."""

    doc_id: str
    index: int
    """first generation index this request fills"""
    messages: list[dict]
    """the chat messages (after fitting), for an endpoint's chat API"""
    prompt_ids: list[int]
    """the same prompt rendered by the model's chat template: what an engine is given"""
    truncated: bool
    split_offset: int | None = None


def fit(tokenizer, build, parts: list[str], keep_end: list[bool], budget: int) -> tuple[list[dict], list[int], bool]:
    """Messages and prompt ids of `build(*parts)`, cutting the parts to fit `budget` tokens (end kept where
    keep_end); `tokenizer` is an `engine.PromptTokenizer`.

    Refuses (rather than loops) when the template alone, with every part empty, does not fit."""
    messages = build(*parts)
    ids = tokenizer.render(messages)
    if len(ids) <= budget:
        return messages, ids, False
    starts = [tokenizer.token_starts(part) for part in parts]
    sizes = [len(s) for s in starts]
    overflow = len(ids) - budget
    while True:
        # Cut the longest part first, so a short prefix or suffix is kept whole.
        room = sum(sizes) - overflow
        share = _shares(sizes, max(room, 0))
        cut = [_cut(part, s, n, end) for part, s, n, end in zip(parts, starts, share, keep_end)]
        messages = build(*cut)
        ids = tokenizer.render(messages)
        if len(ids) <= budget:
            return messages, ids, True
        if room <= 0:
            raise MegadocError(f"the prompt template alone takes {len(ids)} tokens, more than the {budget} the "
                               "context leaves after --max-tokens; lower --max-tokens or raise --max-model-len")
        overflow += len(ids) - budget  # token merges at the cut: take a few more


def _shares(sizes: list[int], room: int) -> list[int]:
    """Token counts per part summing to at most `room`: equal shares, a short part's slack going to others."""
    share = [0] * len(sizes)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        share[i] = min(sizes[i], room // (len(sizes) - rank))
        room -= share[i]
    return share


def _cut(text: str, starts: list[int], keep: int, keep_end: bool) -> str:
    if keep >= len(starts):
        return text
    if keep <= 0:
        return ""
    return text[starts[len(starts) - keep]:] if keep_end else text[:starts[keep]]


def check_template_fits(tokenizer, template: PromptTemplate, budget: int) -> None:
    """Refuse, before any engine starts, a context that cannot hold the template even with an empty document."""
    empty = {"rephrase": ([""], lambda text: template.messages(text=text)),
             "rationale": (["", ""], lambda prefix, suffix: template.messages(prefix=prefix, suffix=suffix))}
    parts, build = empty[template.kind]
    fit(tokenizer, build, parts, [False] * len(parts), budget)


def rephrase_requests(tokenizer, template: PromptTemplate, doc: Document, budget: int) -> list[Request]:
    """One request for the G samples of the document's rephrase."""
    messages, ids, truncated = fit(tokenizer, lambda text: template.messages(text=text), [doc.text], [False], budget)
    return [Request(doc.id, 0, messages, ids, truncated)]


def rationale_requests(tokenizer, template: PromptTemplate, doc: Document, g: int, budget: int
                       ) -> list[Request] | None:
    """One request per split point (None when the document has fewer than G word boundaries)."""
    offsets = split_offsets(doc.text, tokenizer.token_starts(doc.text), g)
    if offsets is None:
        return None
    requests = []
    for index, offset in enumerate(offsets):
        messages, ids, truncated = fit(tokenizer,
                                       lambda prefix, suffix: template.messages(prefix=prefix, suffix=suffix),
                                       [doc.text[:offset], doc.text[offset:]], [True, False], budget)
        requests.append(Request(doc.id, index, messages, ids, truncated, offset))
    return requests


def chunk_requests(tokenizer, kind: str, g: int, template: PromptTemplate, docs: list[Document],
                   budget: int) -> tuple[list[Request], Counter]:
    """A chunk's requests, and its counts so far (documents too short to split, truncated documents)."""
    counts: Counter = Counter()
    requests: list[Request] = []
    for doc in docs:
        if kind == "rephrase":
            doc_requests = rephrase_requests(tokenizer, template, doc, budget)
        else:
            doc_requests = rationale_requests(tokenizer, template, doc, g, budget)
            if doc_requests is None:
                counts["drop:too_short"] += g
                continue
        requests += doc_requests
        counts["truncated_docs"] += any(r.truncated for r in doc_requests)
    return requests, counts
