"""Text side: the normaliser used for CTC targets and WER/CER, and the CTC label sets.

Two CTC label sets (``compressor.labels``), both subwords with the blank at id 0 (a subword lasts
~2-3 frames of 40 ms, so the greedy CTC labels shorten the sequence about 2-4x, while characters,
~1 per 40 ms frame, would barely shorten it; docs/design.md):

- ``llm_tokens`` (:class:`LLMTokenCTCTokenizer`): the LLM's own tokens that occur in the training
  transcripts. Every CTC label is then a token the LLM can read, so the compressor's posteriors
  map exactly into the LLM's embedding space (``speech_llm.piece_prior``).
- ``sentencepiece`` (:class:`CTCTokenizer`): a unigram model trained on the source transcripts of
  the training set (all languages together).
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from .errors import MissingFileError, UsageError

BLANK = 0  # CTC blank id; sentencepiece's <pad> slot, which encode() never emits
UNK = 1
SENTENCEPIECE_FILE = "tokenizer.model"  # a checkpoint's CTC labels, compressor.labels=sentencepiece
LLM_TOKENS_FILE = "ctc_vocab.json"  # ... compressor.labels=llm_tokens

_DROP = re.compile(r"[^\w\s']|_")  # punctuation and symbols (keeps letters, digits, apostrophes)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation -> space, collapse whitespace.

    The one normaliser for CTC targets and for WER/CER: "Hello, World!" -> "hello world".
    Apostrophes inside words stay ("l'eau", "don't"); hyphens split words ("ninety-seven" ->
    "ninety seven").
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = _DROP.sub(" ", text)
    return _SPACE.sub(" ", text).strip(" '")


class CTCTokenizer:
    """Sentencepiece pieces for CTC targets; id 0 is the blank."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> CTCTokenizer:
        """Train a sentencepiece model ("unigram" pieces, or "char": one piece per character) on
        normalised ``texts``; the size is capped by what the data allows."""
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter([normalize(t) for t in texts if normalize(t)]),
                model_writer=buf,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                hard_vocab_limit=False,
                pad_id=BLANK, pad_piece="<blank>", unk_id=UNK, bos_id=-1, eos_id=-1,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. fewer pieces than distinct characters
            raise UsageError(f"cannot train the CTC vocabulary (compressor.vocab_size="
                             f"{vocab_size}): {str(e).split(']')[-1].strip()}") from e
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(normalize(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i != BLANK])

    def decode_ctc(self, labels: Sequence[int]) -> str:
        return self.decode(collapse_ctc(labels))

    def save(self, folder: Path) -> None:
        (Path(folder) / SENTENCEPIECE_FILE).write_bytes(self.model_proto)


def collapse_ctc(labels: Sequence[int]) -> list[int]:
    """Greedy CTC: collapse repeated labels, drop blanks."""
    out, prev = [], None
    for label in labels:
        if label != prev and label != BLANK:
            out.append(int(label))
        prev = label
    return out


def word_start_prefix(llm_tokenizer) -> str:
    """" " for tokenizers that spell a word start as a leading space inside the token (byte-level
    BPE: GPT-2, SmolLM2, where " a" is one token), "" for those that add it themselves."""
    one = llm_tokenizer(" a", add_special_tokens=False)["input_ids"]
    return " " if len(one) == len(llm_tokenizer("a", add_special_tokens=False)["input_ids"]) else ""


class LLMTokenCTCTokenizer:
    """CTC labels that are LLM tokens: 0 blank, 1 unk, then ``llm_ids`` (the LLM's ids of the
    tokens seen in the training transcripts, sorted). Text is normalised and tokenised by the
    LLM's own tokenizer, each word in its word-initial form (a leading space, where the tokenizer
    marks word starts that way), so one spoken word always gets the same labels."""

    def __init__(self, llm_tokenizer, llm_ids: Sequence[int]):
        self.llm_tokenizer = llm_tokenizer
        self.llm_ids = [int(i) for i in llm_ids]
        self._ctc_id = {t: k + 2 for k, t in enumerate(self.llm_ids)}
        self._prefix = word_start_prefix(llm_tokenizer)

    def _llm_encode(self, text: str) -> list[int]:
        text = normalize(text)
        return self.llm_tokenizer(self._prefix + text, add_special_tokens=False)["input_ids"] if text else []

    @classmethod
    def train(cls, texts: Iterable[str], llm_tokenizer) -> LLMTokenCTCTokenizer:
        """The LLM tokens that occur in the normalised ``texts``."""
        probe = cls(llm_tokenizer, [])
        ids = sorted({i for t in texts for i in probe._llm_encode(t)})
        if not ids:
            raise UsageError("cannot build the CTC labels: no transcript has any text")
        return cls(llm_tokenizer, ids)

    @property
    def vocab_size(self) -> int:
        return len(self.llm_ids) + 2

    def same_llm(self, llm_tokenizer) -> bool:
        """Whether ``llm_tokenizer`` spells the labels' ids as the labels' own LLM does."""
        if any(i >= len(llm_tokenizer) for i in self.llm_ids):
            return False
        return llm_tokenizer.convert_ids_to_tokens(self.llm_ids) == \
            self.llm_tokenizer.convert_ids_to_tokens(self.llm_ids)

    def encode(self, text: str) -> list[int]:
        return [self._ctc_id.get(i, UNK) for i in self._llm_encode(text)]

    def to_llm_ids(self, ids: Sequence[int]) -> list[int]:
        return [self.llm_ids[i - 2] for i in ids if i >= 2]

    def decode(self, ids: Sequence[int]) -> str:
        return self.llm_tokenizer.decode(self.to_llm_ids(ids)).strip()

    def decode_ctc(self, labels: Sequence[int]) -> str:
        return self.decode(collapse_ctc(labels))

    def save(self, folder: Path) -> None:
        tokens = self.llm_tokenizer.convert_ids_to_tokens(self.llm_ids)
        (Path(folder) / LLM_TOKENS_FILE).write_text(
            json.dumps({"llm_ids": self.llm_ids, "llm_tokens": tokens}, ensure_ascii=False))

    @classmethod
    def load(cls, file: Path, llm_tokenizer, llm_path) -> LLMTokenCTCTokenizer:
        """Read ``ctc_vocab.json``; a clear error when ``llm_tokenizer`` spells its ids otherwise."""
        data = json.loads(Path(file).read_text())
        ids, tokens = data["llm_ids"], data["llm_tokens"]
        if any(i >= len(llm_tokenizer) for i in ids) or llm_tokenizer.convert_ids_to_tokens(ids) != tokens:
            raise UsageError(f"{file}: the CTC labels are tokens of another LLM than {llm_path} "
                             "(train the compressor with this LLM: speechllama train ctc --llm PATH)")
        return cls(llm_tokenizer, ids)


def load_ctc_tokenizer(folder: str | Path, llm_path: str | Path | None = None):
    """The CTC labels saved in a checkpoint folder: sentencepiece (``tokenizer.model``) or LLM
    tokens (``ctc_vocab.json``, read with the tokenizer of the LLM at ``llm_path``)."""
    folder = Path(folder)
    if (folder / SENTENCEPIECE_FILE).exists():
        return CTCTokenizer((folder / SENTENCEPIECE_FILE).read_bytes())
    if not (folder / LLM_TOKENS_FILE).exists():
        raise MissingFileError(f"{folder}: no {SENTENCEPIECE_FILE} or {LLM_TOKENS_FILE} "
                                "(not a CTC compressor checkpoint?)")
    if llm_path is None or not Path(llm_path).is_dir():
        raise MissingFileError(f"{folder}: its CTC labels are tokens of the LLM at {llm_path}, "
                                "which is not there")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llm_path), local_files_only=True)
    return LLMTokenCTCTokenizer.load(folder / LLM_TOKENS_FILE, tok, llm_path)
