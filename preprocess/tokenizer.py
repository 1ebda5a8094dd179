"""Tokenizers megadoc reads corpora with: HF `tokenizers`, sentencepiece and tiktoken BPE files.

`--tokenizer-type` takes Megatron-LM's names and means what Megatron-LM means by them (HuggingFaceTokenizer,
SentencePieceTokenizer, GPTSentencePieceTokenizer, Llama2Tokenizer, TikTokenizer), so the same flags give the same
token ids as Megatron-LM's (non-legacy, `megatron.core.tokenizers`) tokenizers, and the same .bin files:
- TikTokenizer is Megatron-LM's: a JSON list of ranks ({rank, token_bytes, token_str}), ids shifted up by
  `--tiktoken-num-special-tokens` (default 1000) whose first ids are `<unk> <s> </s> <mask> <pad> <cls> <sep>` (or
  `--tokenizer-special-tokens`) then `<SPECIAL_i>` fillers, Megatron's `--tiktoken-pattern v1|v2` (default v2),
  special-token text encoded as the special token (`allowed_special="all"`), EOD `</s>`.
- Llama3TikTokenizer is megadoc's own name for Meta's Llama 3 layout of a tiktoken BPE file (`.tiktoken`): ranks as
  ids, Llama 3's 256 special tokens after them, Llama 3's pattern (or `--tiktoken-pattern REGEX`), special-token
  text encoded as text (`encode_ordinary`), EOD `<|end_of_text|>`. Megatron-LM has no such type; the vocabulary is
  the one the paper uses, and it writes the same bytes as the HF conversion of that vocabulary.
The type is guessed from the path when left out. Every tokenizer here is the reference encoder, through its
library's native batch API; `megadoc.preprocess.fast_tokenizer` puts gigatoken in front of it where gigatoken
encodes the same ids.

A tokenizer's `fingerprint` names what it does, not where it lives: a hash of its vocabulary size, its EOD and the
ids it gives a fixed multilingual probe text. Token files carry it in their sidecar so that data written by two
tokenizers is never blended, trained or evaluated together (the token dtype alone only tells vocabularies apart
across the 65,500 boundary).
"""

import base64
import functools
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from megadoc.errors import MegadocError

HF_TYPES = ("HuggingFaceTokenizer",)
SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
MEGATRON_TIKTOKEN_TYPES = ("TikTokenizer",)
LLAMA3_TIKTOKEN_TYPES = ("Llama3TikTokenizer",)
TOKENIZER_TYPES = HF_TYPES + SENTENCEPIECE_TYPES + MEGATRON_TIKTOKEN_TYPES + LLAMA3_TIKTOKEN_TYPES

# Megatron-LM's TikTokenizer (megatron/core/tokenizers/text/libraries/tiktoken_tokenizer.py).
MEGATRON_TIKTOKEN_PATTERNS = {
    "v1": r"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    "v2": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
          r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+",
}
MEGATRON_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>"]
MEGATRON_TIKTOKEN_VOCAB = 2**17
"""Megatron-LM's default --vocab-size for TikTokenizer: the rank file is cut to this minus the special tokens. A
file with fewer ranks is read whole (Megatron-LM then needs --vocab-size = ranks + special tokens)."""

# Llama 3's pre-tokenization regex and special tokens, as Meta publishes them (meta-llama/llama3 tokenizer.py).
LLAMA3_PATTERNS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]

SLICE_CHARS = 1_000_000
"""A text longer than this is encoded in slices of about this size where the tokenizer allows it (a cut between a
letter and a space before a letter is a pre-token boundary of every regex pre-tokenizer megadoc names), so a 50 MB
document costs memory like a 1 MB one (HF tokenizers use ~100 bytes per character)."""
MAX_UNSLICED_CHARS = 4_000_000
"""The longest text a tokenizer that cannot be sliced encodes in one piece (~400 MB with HF tokenizers); a longer
one is refused, naming its file and line. gigatoken (the default encoder) has no such limit."""

PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, and I'LL say: we've 1,234,567 reasons.",
    "Data-efficient pre-training by scaling synthetic megadocs: rephrase, stitch, stretch; repeat x32.",
    "    def encode(self, texts: list[str]) -> list[list[int]]:\n        return [t.split() for t in texts]\n",
    "Ünïcödé façade — naïve café, jalapeño; Straße; Ångström; œuvre; ça va? «guillemets» „Anführung“",
    "Привет, мир! Как дела? Ελληνικά κείμενα. עברית טקסט. العربية نص. हिन्दी पाठ। ภาษาไทย",
    "日本語のテキストと中文文本，以及한국어 텍스트。絵文字も: 😀🚀👍🏽 🇫🇷 👨‍👩‍👧",
    "Tabs\tand  double  spaces,\ttrailing   \n\n\nthree newlines\r\nCRLF\rCR  \n  \n end",
    "<html><body><p class=\"x\">Hello&nbsp;world</p><br/></body></html> {\"json\": [1, 2.5e-3, null]}",
    "Numbers 0 00 000 0000 12345678901234567890 3.14159 -42 +7 1e10 0x1F 2024-05-31 12:34:56",
    "URLs https://example.com/a/b?c=d&e=f#g and e-mails someone@example.org, paths C:\\dir\\file.txt",
    "<s></s><unk><pad><|endoftext|><|end_of_text|><|begin_of_text|><|im_start|>user<|im_end|>",
    "Math: ∑_{i=1}^{n} x_i² ≤ ∫₀^∞ e^{-x} dx; ∀ε>0 ∃δ; α β γ δ; ½ ¼ ¾; ≠ ≈ ∞ √2",
    "", " ", "a", "\n", "  leading and trailing  ",
]
"""A fixed text whose ids fingerprint a tokenizer (and check gigatoken against it at start-up): prose, code,
accents, scripts, emoji, whitespace runs, markup, numbers, special-token strings."""


@dataclass(frozen=True)
class TokenizerSpec:
    """How to build a tokenizer: what Megatron-LM's tokenizer flags say."""

    model: str
    """--tokenizer-model: a tokenizer.json or HF folder, a sentencepiece .model, a tiktoken file, or 'smollm2'."""
    type: str | None = None
    """--tokenizer-type (Megatron-LM's names, plus Llama3TikTokenizer); guessed from `model` when None."""
    tiktoken_pattern: str | None = None
    """--tiktoken-pattern: TikTokenizer v1|v2 (default v2); Llama3TikTokenizer llama3 (default) or a regex."""
    tiktoken_num_special_tokens: int = 1000
    """--tiktoken-num-special-tokens: ids TikTokenizer reserves for special tokens before the ranks."""
    tokenizer_special_tokens: list[str] | None = None
    """--tokenizer-special-tokens: TikTokenizer's named special tokens (default <unk> <s> </s> <mask> <pad> <cls>
    <sep>)."""
    eod_id: int | None = None
    """--eod-id: overrides the tokenizer's own end-of-document id (must be inside the vocabulary)."""
    hf_include_special_tokens: bool = False
    """Megatron-LM's --tokenizer-hf-include-special-tokens: let the HF tokenizer add its special tokens."""
    threads: int = field(default=2, compare=False)
    """Encoding threads (how, not what: not part of a tokenizer's identity)."""


class Tokenizer:
    """The interface every stage uses: vocab_size, eod, encode_batch, decode, fingerprint."""

    vocab_size: int
    eod: int
    spec: TokenizerSpec
    sliceable = False
    """Whether a text can be cut between a letter and a space before a letter without changing its ids."""
    matches_special_tokens = False
    """Whether a special token's text inside a document encodes as that special token (HF, Megatron's
    TikTokenizer) rather than as text (sentencepiece, Llama3TikTokenizer)."""

    def _encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return f"{type(self).__name__}({self.spec.model})"

    @property
    def max_text_chars(self) -> int | None:
        """The longest text `encode_batch` takes (None: any, encoded in slices)."""
        return None if self.sliceable else MAX_UNSLICED_CHARS

    def _encoded_groups(self, texts: list[str]) -> Iterator[tuple[list[int], list[list[int]]]]:
        """(owners, ids) of the texts, a few slices at a time when one is long, so memory stays that of a few
        slices: ids[k] belongs to texts[owners[k]], and a text's slices come in order."""
        if not self.sliceable or all(len(text) <= SLICE_CHARS for text in texts):
            yield list(range(len(texts))), self._encode(texts)
            return
        group, owners, chars = [], [], 0
        for index, text in enumerate(texts):
            cuts = slice_points(text)
            for start, end in zip(cuts, cuts[1:]):
                group.append(text[start:end])
                owners.append(index)
                chars += end - start
                if chars >= SLICE_CHARS * self.spec.threads:
                    yield owners, self._encode(group)
                    group, owners, chars = [], [], 0
        if group:
            yield owners, self._encode(group)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, as Megatron-LM's tokenizer of the same type gives them."""
        joined: list[list[int]] = [[] for _ in texts]
        for owners, encoded in self._encoded_groups(texts):
            for owner, ids in zip(owners, encoded):
                joined[owner].extend(ids)
        return joined

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every text's ids back to back, each text's id count): the form the .bin writer takes, made a group of
        slices at a time (no Python list of a whole huge document's ids)."""
        flats, lengths = [], np.zeros(len(texts), np.int64)
        for owners, encoded in self._encoded_groups(texts):
            counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
            np.add.at(lengths, owners, counts)
            flats.append(np.fromiter(itertools.chain.from_iterable(encoded), np.int64, int(counts.sum())))
        return (np.concatenate(flats) if flats else np.zeros(0, np.int64)), lengths

    @functools.cached_property
    def fingerprint(self) -> str:
        """What this tokenizer does, hashed: vocabulary size, EOD and the ids of PROBE_TEXTS."""
        payload = json.dumps([self.vocab_size, self.eod, self._encode(PROBE_TEXTS)])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def identity(self) -> dict:
        """What a token file's sidecar records about the tokenizer that wrote it."""
        return {"fingerprint": self.fingerprint, "type": self.spec.type or guess_type(self.spec.model),
                "model": self.spec.model,
                "vocab_size": self.vocab_size, "eod": self.eod}

    @property
    def unique_identifiers(self) -> dict:
        """What Megatron-Core's dataset cache key needs to tell tokenizers apart."""
        return {"class": type(self).__name__, "model": os.path.abspath(self.spec.model), "eod": self.eod}


_CUT = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])")  # a space between two letters


def slice_points(text: str) -> list[int]:
    """0, the cut points (each a space between two letters, about SLICE_CHARS apart), len(text)."""
    cuts, start = [0], 0
    while len(text) - start > SLICE_CHARS:
        match = None
        for match in _CUT.finditer(text, start + SLICE_CHARS // 2, start + SLICE_CHARS):
            pass
        if match is None:
            match = _CUT.search(text, start + SLICE_CHARS)
            if match is None:
                break
        start = match.start()
        cuts.append(start)
    return cuts + [len(text)]


class HFTokenizer(Tokenizer):
    matches_special_tokens = True

    def __init__(self, spec: TokenizerSpec):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(spec.model)
        self.file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self._tok = RustTokenizer.from_file(str(self.file))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise MegadocError(f"{self.file}: not a readable HF tokenizer ({str(error).splitlines()[0]})") from None
        self.spec = spec
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = spec.eod_id if spec.eod_id is not None else self._find_eod(path)
        self.sliceable = self._regex_pre_tokenized()

    def _find_eod(self, path: Path) -> int:
        config = (path if path.is_dir() else path.parent) / "tokenizer_config.json"
        candidates = []
        if config.exists():
            try:
                eos = json.loads(config.read_text()).get("eos_token")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
                raise MegadocError(f"{config}: malformed tokenizer_config.json ({error}); fix it or pass "
                                   "--eod-id") from None
            candidates.append(eos.get("content") if isinstance(eos, dict) else eos)
        candidates += ["<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>"]
        for token in candidates:
            if isinstance(token, str) and self._tok.token_to_id(token) is not None:
                return self._tok.token_to_id(token)
        raise MegadocError(f"{self.spec.model}: no end-of-document token found; pass --eod-id")

    def _encode(self, texts):
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=self.spec.hf_include_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids):
        return self._tok.decode(list(ids), skip_special_tokens=False)


    def _regex_pre_tokenized(self) -> bool:
        """A byte-level BPE split by a regex pre-tokenizer (GPT-2, Llama 3, SmolLM2, ...) with no normalizer:
        cutting between a letter and a space before a letter leaves its ids unchanged."""
        if self._tok.pre_tokenizer is None or self._tok.normalizer is not None or type(self._tok.model).__name__ != "BPE":
            return False
        pre = json.loads(self._tok.pre_tokenizer.__getstate__())
        steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        return any(s.get("type") == "Split" or s.get("type") == "ByteLevel" and s.get("use_regex") for s in steps)

    def missing_byte_tokens(self, byte_chars) -> list[str]:
        """Which of a byte-level BPE vocabulary's 256 single-byte tokens (spelled as `byte_chars`) it lacks (none
        for a vocabulary that is not byte-level)."""
        pre = self._tok.pre_tokenizer
        if pre is None or b"ByteLevel" not in pre.__getstate__() or type(self._tok.model).__name__ != "BPE":
            return []
        return [char for char in byte_chars if self._tok.token_to_id(char) is None]


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, spec: TokenizerSpec):
        import sentencepiece

        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=spec.model)
        except (OSError, RuntimeError) as error:
            raise MegadocError(f"{spec.model}: not a readable sentencepiece model ({error})") from None
        self.spec = spec
        self.vocab_size = self._sp.get_piece_size()
        self.eod = spec.eod_id if spec.eod_id is not None else self._sp.eos_id()

    def _encode(self, texts):
        return self._sp.encode(texts, num_threads=self.spec.threads)

    def decode(self, ids):
        return self._sp.decode(list(ids))


class _TiktokenBase(Tokenizer):
    """A tiktoken Encoding built from ranks, a pattern and special tokens; `ranks`/`specials` are kept for the
    gigatoken conversion."""

    sliceable = True

    def _build(self, ranks: dict[bytes, int], pattern: str, specials: dict[str, int]) -> None:
        import tiktoken

        self.ranks, self.pattern, self.specials = ranks, pattern, specials
        try:
            self._enc = tiktoken.Encoding(Path(self.spec.model).stem, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=specials)
        except ValueError as error:  # a pattern that is not a regex
            raise MegadocError(f"--tiktoken-pattern {pattern!r}: not a valid regex ({error})") from None
        self.vocab_size = self._enc.n_vocab

    def decode(self, ids):
        return self._enc.decode(list(ids))


class MegatronTikTokenizer(_TiktokenBase):
    """Megatron-LM's TikTokenizer, id for id (see the module docstring)."""

    matches_special_tokens = True

    def __init__(self, spec: TokenizerSpec):
        self.spec = spec
        pattern_name = spec.tiktoken_pattern or "v2"
        if pattern_name not in MEGATRON_TIKTOKEN_PATTERNS:
            raise MegadocError(f"--tiktoken-pattern {pattern_name!r}: TikTokenizer (Megatron-LM's) takes v1 or v2; "
                               "a Llama 3 .tiktoken file is --tokenizer-type Llama3TikTokenizer")
        named = list(spec.tokenizer_special_tokens or MEGATRON_SPECIAL_TOKENS)
        count = spec.tiktoken_num_special_tokens
        if len(set(named)) != len(named) or not set(MEGATRON_SPECIAL_TOKENS) <= set(named) or len(named) > count:
            raise MegadocError(f"--tokenizer-special-tokens: must be unique, include {' '.join(MEGATRON_SPECIAL_TOKENS)}"
                               f" and number at most --tiktoken-num-special-tokens ({count})")
        specials = named + [f"<SPECIAL_{i}>" for i in range(len(named), count)]
        ranks = _megatron_ranks(spec.model, MEGATRON_TIKTOKEN_VOCAB - count, count)
        self._build(ranks, MEGATRON_TIKTOKEN_PATTERNS[pattern_name], {t: i for i, t in enumerate(specials)})
        self.eod = spec.eod_id if spec.eod_id is not None else specials.index("</s>")

    def _encode(self, texts):
        return self._enc.encode_batch(texts, num_threads=self.spec.threads, allowed_special="all")


def _megatron_ranks(path: str, max_ranks: int, offset: int) -> dict[bytes, int]:
    """Megatron-LM's `reload_mergeable_ranks`: a JSON list of {rank, token_bytes (base64), token_str}, cut to
    `max_ranks`, each rank shifted up by `offset`."""
    try:
        vocab = json.loads(Path(path).read_text())
        ranks = {}
        for i, entry in enumerate(vocab[:max_ranks]):
            token = base64.b64decode(entry["token_bytes"], validate=True)
            if entry["rank"] != i:
                raise ValueError(f"entry {i} has rank {entry['rank']}")
            if i < 256 and token != bytes([i]):
                raise ValueError(f"entry {i} is {token!r}, not the single byte {i} (the first 256 ranks are the bytes)")
            ranks[token] = i + offset
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: not a Megatron-LM TikTokenizer vocabulary (a JSON list of {{rank, token_bytes, "
                           f"token_str}}: {error})") from None
    return ranks


class Llama3TikTokenizer(_TiktokenBase):
    """A tiktoken BPE ranks file plus a pattern, with Llama 3's 256 special tokens (from the file or after it)."""

    def __init__(self, spec: TokenizerSpec):
        from tiktoken.load import load_tiktoken_bpe

        self.spec = spec
        try:
            ranks = load_tiktoken_bpe(spec.model)
        except Exception as error:  # tiktoken raises ValueError / OSError / binascii.Error for bad files
            raise MegadocError(f"{spec.model}: not a readable tiktoken BPE file ({error})") from None
        name = spec.tiktoken_pattern or "llama3"
        specials = _split_special_tokens(ranks)
        self._build(ranks, LLAMA3_PATTERNS.get(name, name), specials)
        self.eod = spec.eod_id if spec.eod_id is not None else specials["<|end_of_text|>"]

    def _encode(self, texts):
        return self._enc.encode_ordinary_batch(texts, num_threads=self.spec.threads)


def _split_special_tokens(ranks: dict[bytes, int]) -> dict[str, int]:
    """Special tokens out of `ranks` (some files carry them as ranks), else appended after the last rank."""
    present = {token: ranks.pop(token.encode()) for token in LLAMA3_SPECIAL_TOKENS if token.encode() in ranks}
    if present:
        return present
    return {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}


def guess_type(model: str) -> str:
    """The tokenizer type a path most likely is."""
    if model.endswith(".model"):
        return "SentencePieceTokenizer"
    if model.endswith((".tiktoken", ".bpe")):
        return "Llama3TikTokenizer"
    if model.endswith(".json") or os.path.isdir(model):
        return "HuggingFaceTokenizer"
    raise MegadocError(f"{model}: cannot tell the tokenizer type from the path; pass --tokenizer-type")


EMBEDDED_TOKENIZER = "smollm2"  # the embedded model's tokenizer (megadoc.preprocess.generate.embedded_model), usable with no file at hand
_CLASSES = {**dict.fromkeys(HF_TYPES, HFTokenizer), **dict.fromkeys(SENTENCEPIECE_TYPES, SentencePieceTokenizer),
            **dict.fromkeys(MEGATRON_TIKTOKEN_TYPES, MegatronTikTokenizer),
            **dict.fromkeys(LLAMA3_TIKTOKEN_TYPES, Llama3TikTokenizer)}


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    if not spec.model:
        raise MegadocError("--tokenizer-model is empty: name a tokenizer.json / HF folder, a .model, a tiktoken file "
                           "or smollm2")
    if spec.model == EMBEDDED_TOKENIZER:
        from megadoc.preprocess.generate.embedded_model import default_model_dir

        spec = replace(spec, model=default_model_dir(), type="HuggingFaceTokenizer")
    if not os.path.exists(spec.model):
        raise MegadocError(f"{spec.model}: no such tokenizer file or folder")
    kind = spec.type or guess_type(spec.model)
    if kind not in _CLASSES:
        raise MegadocError(f"unsupported --tokenizer-type {kind!r} (one of {', '.join(TOKENIZER_TYPES)})")
    tokenizer = _CLASSES[kind](spec)
    if not 0 <= tokenizer.eod < tokenizer.vocab_size:
        raise MegadocError(f"--eod-id {tokenizer.eod}: outside the vocabulary of {tokenizer.vocab_size:,} ids of "
                           f"{spec.model}")
    return tokenizer


def add_tokenizer_arguments(parser, required: bool = True) -> None:
    """Megatron-LM's tokenizer flags, declared once for every stage that counts, writes or trains on tokens."""
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-model", required=required,
                       help="tokenizer.json / HF folder, sentencepiece .model, tiktoken file, or 'smollm2' "
                       "(the embedded model's tokenizer)")
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None,
                       help="Megatron-LM's tokenizer type, or Llama3TikTokenizer (default: guessed from "
                       "--tokenizer-model)")
    group.add_argument("--tiktoken-pattern", default=None,
                       help="TikTokenizer: v1 or v2 (default v2, as Megatron-LM); Llama3TikTokenizer: llama3 "
                       "(default) or a regex")
    group.add_argument("--tiktoken-num-special-tokens", type=int, default=TokenizerSpec.tiktoken_num_special_tokens,
                       help="TikTokenizer: ids reserved for special tokens before the ranks (as Megatron-LM)")
    group.add_argument("--tokenizer-special-tokens", nargs="+", default=None,
                       help="TikTokenizer: its named special tokens (as Megatron-LM)")
    group.add_argument("--eod-id", type=int, default=None, help="override the end-of-document token id")
    group.add_argument("--tokenizer-hf-include-special-tokens", action="store_true",
                       help="let the HF tokenizer add its special tokens (as Megatron-LM's flag of that name)")


def tokenizer_flags(spec: TokenizerSpec) -> list[str]:
    """The flags that give `spec` back through `spec_from_args` (how a pipeline passes its tokenizer to a stage)."""
    flags = ["--tokenizer-model", spec.model]
    if spec.type is not None:
        flags += ["--tokenizer-type", spec.type]
    if spec.tiktoken_pattern is not None:
        flags += ["--tiktoken-pattern", spec.tiktoken_pattern]
    if spec.tiktoken_num_special_tokens != TokenizerSpec.tiktoken_num_special_tokens:
        flags += ["--tiktoken-num-special-tokens", str(spec.tiktoken_num_special_tokens)]
    if spec.tokenizer_special_tokens:
        flags += ["--tokenizer-special-tokens", *spec.tokenizer_special_tokens]
    if spec.eod_id is not None:
        flags += ["--eod-id", str(spec.eod_id)]
    if spec.hf_include_special_tokens:
        flags.append("--tokenizer-hf-include-special-tokens")
    return flags


def spec_from_args(args, threads: int = 2) -> TokenizerSpec | None:
    """The spec the tokenizer flags describe (None when --tokenizer-model was left out where it is optional)."""
    if args.tokenizer_model is None:
        return None
    return TokenizerSpec(model=args.tokenizer_model, type=args.tokenizer_type, tiktoken_pattern=args.tiktoken_pattern,
                         tiktoken_num_special_tokens=args.tiktoken_num_special_tokens,
                         tokenizer_special_tokens=args.tokenizer_special_tokens, eod_id=args.eod_id,
                         hf_include_special_tokens=args.tokenizer_hf_include_special_tokens, threads=threads)
