"""gigatoken in front of a megadoc tokenizer: the same ids, an order of magnitude faster, or not used at all.

gigatoken (PyPI `gigatoken`, MIT; what Megatron-LM's `--use-gigatoken` turns on) encodes byte-level BPE and
byte-fallback SentencePiece BPE in Rust on all threads and returns every document's ids as one flat buffer plus
offsets, so no Python object is made per token. It is built from what the reference tokenizer reads:
- HuggingFaceTokenizer: its tokenizer.json. A byte-level vocabulary that lacks some single-byte tokens (SmolLM2
  lacks 21, bytes that never occur in UTF-8 text plus rare control characters, which HF drops) gets them as
  sentinel ids past the vocabulary; a document that produces one is re-encoded by the reference.
- SentencePiece (byte-fallback models only): its .model. gigatoken encodes `<s>`-style strings inside a text as the
  special token, sentencepiece as text, so a document holding one is re-encoded by the reference.
- Llama3TikTokenizer and Megatron-LM's TikTokenizer: their ranks, converted once to a tokenizer.json (merges derived
  from the ranks as transformers' converter does; cached under $MEGADOC_CACHE), with Megatron-LM's special tokens as
  added tokens (it encodes them in text; Llama3TikTokenizer does not, so they are left out).
gigatoken runs only for the pre-tokenizer regexes it implements natively (it refuses others on load), and only
after a start-up self-check: the reference tokenizer and gigatoken encode a fixed probe text plus a sample of the
corpus, and any difference falls back to the reference with a warning. `--no-gigatoken` forces the reference.
"""

import hashlib
import json
import re
import sys

import numpy as np

from megadoc.files import atomic_write
from megadoc.preprocess.tokenizer import (PROBE_TEXTS, HFTokenizer, Llama3TikTokenizer, MegatronTikTokenizer,
                                          SentencePieceTokenizer, Tokenizer, _TiktokenBase)

SAMPLE_CHARS = 200_000
"""Characters of the corpus the self-check encodes with both encoders (with the probe text)."""


class GigatokenEncoder:
    """`encode_flat` through gigatoken, with the documents gigatoken cannot be trusted on sent to the reference."""

    def __init__(self, fast, reference: Tokenizer, guard: re.Pattern | None, sentinels_from: int | None):
        self.fast, self.reference = fast, reference
        self.guard = guard  # texts matching it go to the reference
        self.sentinels_from = sentinels_from  # ids from here on are gigatoken-only: their texts go to the reference

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every text's ids back to back, each text's id count), as `Tokenizer.encode_flat`."""
        tokens, offsets = _flat(self.fast.encode_batch(texts))
        redo = set()
        if self.sentinels_from is not None:
            bad = np.flatnonzero(tokens >= self.sentinels_from)
            redo.update(np.searchsorted(offsets, bad, side="right") - 1)
        if self.guard is not None:
            joined = "\x00".join(texts)  # one scan of the batch; \x00 is in no special token
            if self.guard.search(joined):
                starts = np.cumsum([0] + [len(text) + 1 for text in texts])
                redo.update(np.searchsorted(starts, [m.start() for m in self.guard.finditer(joined)], side="right") - 1)
        lengths = np.diff(offsets)
        if redo:
            tokens, lengths = self._splice(texts, tokens, offsets, sorted(int(i) for i in redo))
        return tokens, lengths

    def _splice(self, texts, tokens, offsets, redo: list[int]):
        """Replace the ids of texts `redo` with the reference's."""
        replacement = self.reference.encode_batch([texts[i] for i in redo])
        pieces, lengths, previous = [], np.diff(offsets), 0
        for index, ids in zip(redo, replacement):
            pieces += [tokens[offsets[previous]:offsets[index]], np.asarray(ids, dtype=tokens.dtype)]
            lengths[index] = len(ids)
            previous = index + 1
        pieces.append(tokens[offsets[previous]:])
        return np.concatenate(pieces), lengths


def _flat(array) -> tuple[np.ndarray, np.ndarray]:
    """The flat ids and offsets of gigatoken's awkward array of documents (views, no copy)."""
    layout = array.layout
    return np.asarray(layout.content.data)[layout.offsets[0]:], np.asarray(layout.offsets.data) - layout.offsets[0]


def gigatoken_encoder(reference: Tokenizer, sample: list[str]) -> GigatokenEncoder | None:
    """gigatoken for `reference`, or None (with a warning saying why) where it is not installed, does not support
    the tokenizer, or encodes the probe text or `sample` differently."""
    try:
        import gigatoken  # noqa: F401
    except ImportError:
        _warn("gigatoken is not installed (pip install gigatoken): tokenizing with the reference encoder")
        return None
    try:
        encoder = _load(reference)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # gigatoken raises ValueError/RuntimeError, and pyo3 panics (BaseException)
        encoder, why = None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    else:
        why = None if encoder else "no gigatoken form of this tokenizer type/options"
    if encoder is not None:
        why = _self_check(encoder, reference, sample)
    if why:
        _warn(f"gigatoken not used for {reference.name} ({why}): tokenizing with the reference encoder")
        return None
    return encoder


def _warn(message: str) -> None:
    print(f"megadoc: warning: {message}", file=sys.stderr)


def _self_check(encoder: GigatokenEncoder, reference: Tokenizer, sample: list[str]) -> str | None:
    """None when gigatoken gives the reference's ids on the probe text and the corpus sample, else why not."""
    texts, budget = list(PROBE_TEXTS), SAMPLE_CHARS
    for text in sample:
        if budget <= 0:
            break
        texts.append(text[:budget])
        budget -= len(texts[-1])
    tokens, lengths = encoder.encode_flat(texts)
    expected = reference.encode_batch(texts)
    if lengths.tolist() == list(map(len, expected)) and tokens.tolist() == [t for ids in expected for t in ids]:
        return None
    got = np.split(tokens, np.cumsum(lengths)[:-1])
    first = next(i for i, ids in enumerate(expected) if got[i].tolist() != ids)
    return f"self-check: ids differ on sample text {first} ({texts[first][:40]!r})"


def _load(reference: Tokenizer) -> GigatokenEncoder | None:
    import gigatoken

    if isinstance(reference, HFTokenizer):
        if reference.spec.hf_include_special_tokens:
            return None  # gigatoken adds no special tokens (no post-processor)
        missing = reference.missing_byte_tokens(_byte_encoder().values())
        if not missing:
            return GigatokenEncoder(gigatoken.Tokenizer(str(reference.file)), reference, None, None)
        config = json.loads(reference.file.read_text())
        vocab = config["model"]["vocab"]
        vocab.update({char: reference.vocab_size + i for i, char in enumerate(missing)})
        return GigatokenEncoder(gigatoken.Tokenizer.from_json(json.dumps(config)), reference, None, reference.vocab_size)
    if isinstance(reference, SentencePieceTokenizer):
        fast = gigatoken.Tokenizer.from_sentencepiece(reference.spec.model)
        specials = sorted(fast._special_tokens(), key=len, reverse=True)
        guard = re.compile("|".join(map(re.escape, specials))) if specials else None
        return GigatokenEncoder(fast, reference, guard, None)
    if isinstance(reference, (Llama3TikTokenizer, MegatronTikTokenizer)):
        fast = gigatoken.Tokenizer.from_json(_cached_tiktoken_json(reference))
        return GigatokenEncoder(fast, reference, None, None)
    return None


def _byte_encoder() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE vocabularies spell bytes this way)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def tiktoken_json(reference: _TiktokenBase) -> str:
    """A tokenizer.json equivalent to a tiktoken Encoding: byte-level BPE whose merges come from the ranks (each
    token's splits into two ranked halves, ordered by the token's rank, as transformers' TikTokenConverter), the
    pattern as a Split pre-tokenizer, and the special tokens as added tokens where the reference encodes them in
    text."""
    byte_char = _byte_encoder()
    table = [byte_char[b] for b in range(256)]

    def spell(token: bytes) -> str:
        return "".join([table[b] for b in token])

    ranks = reference.ranks
    merges = []
    for token, rank in ranks.items():
        splits = sorted((ranks[token[:i]], ranks[token[i:]], i) for i in range(1, len(token))
                        if token[:i] in ranks and token[i:] in ranks)
        merges += [(rank, spell(token[:i]), spell(token[i:])) for _, _, i in splits]
    merges.sort(key=lambda merge: merge[0])
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in reference.specials.items()] if reference.matches_special_tokens else []
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": reference.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {spell(token): rank for token, rank in ranks.items()},
                  "merges": [[left, right] for _, left, right in merges]}})


def _cached_tiktoken_json(reference: _TiktokenBase) -> str:
    """`tiktoken_json`, converted once per vocabulary, pattern and special tokens (~1.5 s for Llama 3)."""
    from megadoc.preprocess.generate.embedded_model import cache_dir

    key = hashlib.sha256()
    with open(reference.spec.model, "rb") as handle:
        key.update(handle.read())
    key.update(json.dumps([type(reference).__name__, reference.pattern, reference.specials,
                           min(reference.ranks.values()), len(reference.ranks)]).encode())
    path = cache_dir() / "gigatoken" / f"{key.hexdigest()[:24]}.json"
    if path.exists():
        return path.read_text()
    data = tiktoken_json(reference)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as handle:
            handle.write(data)
    except OSError:
        pass  # a read-only cache only costs the conversion next time
    return data
