"""Text side: the normaliser used for CTC targets and WER/CER, and the CTC tokenizer.

The CTC vocabulary is a sentencepiece unigram model trained on the source transcripts of the
training set (all languages together), with the blank at id 0. Subword pieces rather than
characters: a piece lasts ~2-3 frames of 40 ms, so the greedy CTC labels shorten the sequence
about 2-4x, while characters (~1 per 40 ms frame) would barely shorten it (docs/design.md).
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Sequence

import sentencepiece as spm

BLANK = 0  # CTC blank id; sentencepiece's <pad> slot, which encode() never emits
UNK = 1

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
            raise ValueError(f"cannot train the CTC vocabulary (compressor.vocab_size="
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
        """Greedy CTC: collapse repeated labels, drop blanks, detokenise."""
        out, prev = [], None
        for label in labels:
            if label != prev and label != BLANK:
                out.append(int(label))
            prev = label
        return self.decode(out)
