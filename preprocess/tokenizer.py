"""Tokenizers megadoc reads corpora with: HF `tokenizers`, sentencepiece and tiktoken BPE files.

`--tokenizer-type` takes Megatron-LM's names (HuggingFaceTokenizer, SentencePieceTokenizer,
GPTSentencePieceTokenizer, Llama2Tokenizer, TikTokenizer); it is guessed from the path when left out. Every
tokenizer encodes through its library's native batch API, which runs on all the threads it is given, and encodes
the way Megatron-LM's (non-legacy) tokenizers do, so the token ids — and so the .bin files — are the same.
"""

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from megadoc.errors import MegadocError

HF_TYPES = ("HuggingFaceTokenizer",)
SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
TIKTOKEN_TYPES = ("TikTokenizer",)
TOKENIZER_TYPES = HF_TYPES + SENTENCEPIECE_TYPES + TIKTOKEN_TYPES

# Llama 3's pre-tokenization regex and special tokens, as Meta publishes them (meta-llama/llama3 tokenizer.py).
TIKTOKEN_PATTERNS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]


@dataclass(frozen=True)
class TokenizerSpec:
    """How to build a tokenizer: what Megatron-LM's tokenizer flags say."""

    model: str
    type: str | None = None  # a Megatron-LM --tokenizer-type; guessed from `model` when None
    tiktoken_pattern: str = "llama3"  # a name in TIKTOKEN_PATTERNS or a regex
    eod_id: int | None = None  # overrides the tokenizer's own end-of-document id
    hf_include_special_tokens: bool = False  # Megatron-LM's --tokenizer-hf-include-special-tokens
    threads: int = 2


class Tokenizer:
    """The interface every stage uses: vocab_size, eod, encode_batch, decode."""

    vocab_size: int
    eod: int
    spec: TokenizerSpec

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    @property
    def unique_identifiers(self) -> dict:
        """What Megatron-Core's dataset cache key needs to tell tokenizers apart."""
        return {"class": type(self).__name__, "model": os.path.abspath(self.spec.model), "eod": self.eod}


class HFTokenizer(Tokenizer):
    def __init__(self, spec: TokenizerSpec):
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(spec.model)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self._tok = RustTokenizer.from_file(str(file))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise MegadocError(f"{file}: not a readable HF tokenizer ({error})") from None
        self.spec = spec
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.eod = spec.eod_id if spec.eod_id is not None else self._find_eod(path)

    def _find_eod(self, path: Path) -> int:
        config = (path if path.is_dir() else path.parent) / "tokenizer_config.json"
        candidates = []
        if config.exists():
            eos = json.loads(config.read_text()).get("eos_token")
            candidates.append(eos.get("content") if isinstance(eos, dict) else eos)
        candidates += ["<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>"]
        for token in candidates:
            if token and self._tok.token_to_id(token) is not None:
                return self._tok.token_to_id(token)
        raise MegadocError(f"{self.spec.model}: no end-of-document token found; pass --eod-id")

    def encode_batch(self, texts):
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=self.spec.hf_include_special_tokens)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids):
        return self._tok.decode(list(ids), skip_special_tokens=False)


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

    def encode_batch(self, texts):
        return self._sp.encode(texts, num_threads=self.spec.threads)

    def decode(self, ids):
        return self._sp.decode(list(ids))


class TikTokenizer(Tokenizer):
    """A tiktoken BPE ranks file plus a pattern, with Llama 3's 256 special tokens (from the file or after it)."""

    def __init__(self, spec: TokenizerSpec):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        try:
            ranks = load_tiktoken_bpe(spec.model)
        except Exception as error:  # tiktoken raises ValueError / OSError / binascii.Error for bad files
            raise MegadocError(f"{spec.model}: not a readable tiktoken BPE file ({error})") from None
        pattern = TIKTOKEN_PATTERNS.get(spec.tiktoken_pattern, spec.tiktoken_pattern)
        special = _split_special_tokens(ranks)
        self._enc = tiktoken.Encoding(Path(spec.model).stem, pat_str=pattern, mergeable_ranks=ranks,
                                      special_tokens=special)
        self.spec = spec
        self.vocab_size = self._enc.n_vocab
        self.eod = spec.eod_id if spec.eod_id is not None else special["<|end_of_text|>"]

    def encode_batch(self, texts):
        return self._enc.encode_ordinary_batch(texts, num_threads=self.spec.threads)

    def decode(self, ids):
        return self._enc.decode(list(ids))


def _split_special_tokens(ranks: dict[bytes, int]) -> dict[str, int]:
    """Special tokens out of `ranks` (some files carry them as ranks), else appended after the last rank."""
    present = {token: ranks.pop(token.encode()) for token in LLAMA3_SPECIAL_TOKENS if token.encode() in ranks}
    if present:
        return present
    return {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIAL_TOKENS)}


def guess_type(model: str) -> str:
    """The Megatron-LM tokenizer type a path most likely is."""
    if model.endswith(".model"):
        return "SentencePieceTokenizer"
    if model.endswith((".tiktoken", ".bpe")):
        return "TikTokenizer"
    if model.endswith(".json") or os.path.isdir(model):
        return "HuggingFaceTokenizer"
    raise MegadocError(f"{model}: cannot tell the tokenizer type from the path; pass --tokenizer-type")


EMBEDDED_TOKENIZER = "smollm2"  # the embedded model's tokenizer (megadoc.preprocess.generate.embedded_model), usable with no file at hand


def build_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    if spec.model == EMBEDDED_TOKENIZER:
        from megadoc.preprocess.generate.embedded_model import default_model_dir

        spec = replace(spec, model=default_model_dir(), type="HuggingFaceTokenizer")
    if not os.path.exists(spec.model):
        raise MegadocError(f"{spec.model}: no such tokenizer file or folder")
    kind = spec.type or guess_type(spec.model)
    if kind in HF_TYPES:
        return HFTokenizer(spec)
    if kind in SENTENCEPIECE_TYPES:
        return SentencePieceTokenizer(spec)
    if kind in TIKTOKEN_TYPES:
        return TikTokenizer(spec)
    raise MegadocError(f"unsupported --tokenizer-type {kind!r} (one of {', '.join(TOKENIZER_TYPES)})")


def add_tokenizer_arguments(parser, required: bool = True) -> None:
    """Megatron-LM's tokenizer flags, declared once for every stage that counts, writes or trains on tokens."""
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-model", required=required,
                       help="tokenizer.json / HF folder, sentencepiece .model, tiktoken BPE file, or 'smollm2' "
                       "(the embedded model's tokenizer)")
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None,
                       help="Megatron-LM tokenizer type (default: guessed from --tokenizer-model)")
    group.add_argument("--tiktoken-pattern", default="llama3",
                       help="TikTokenizer pre-tokenization: a known name (llama3) or a regex")
    group.add_argument("--eod-id", type=int, default=None, help="override the end-of-document token id")
    group.add_argument("--tokenizer-hf-include-special-tokens", action="store_true",
                       help="let the HF tokenizer add its special tokens (as Megatron-LM's flag of that name)")


def tokenizer_flags(spec: TokenizerSpec) -> list[str]:
    """The flags that give `spec` back through `spec_from_args` (how a pipeline passes its tokenizer to a stage)."""
    flags = ["--tokenizer-model", spec.model]
    if spec.type is not None:
        flags += ["--tokenizer-type", spec.type]
    if spec.tiktoken_pattern != TokenizerSpec.tiktoken_pattern:
        flags += ["--tiktoken-pattern", spec.tiktoken_pattern]
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
                         eod_id=args.eod_id, hf_include_special_tokens=args.tokenizer_hf_include_special_tokens,
                         threads=threads)
