"""The demo corpus: human-translated Fish Fillets lines and numbers, spoken by espeak-ng.

Everything comes from Debian packages (``fillets-ng-data``, ``espeak-ng``) and
``num2words``, so the corpus can be rebuilt offline, anywhere, bit for bit:

* sentences: every Fillets dialogue line translated into the language, paired
  with the game's English line; split by ``split_of(<dialogue key>)``.
* numbers: cardinals 0..9999, years 1900..2030 and ordinals 1..100 written out
  by num2words in the language and in English; split by ``split_of("num-<n>")``.

Each utterance gets one wav (16 kHz mono 16-bit, ``audio/<lang>/``) and two
rows: ``<lang>-<key>-st`` (-> English) and ``<lang>-<key>-asr`` (-> itself).
The voice (espeak variant, speed, pitch) is drawn from a random generator seeded
with ``(seed, lang, key)``, so it does not depend on which other lines are built.
"""

import hashlib
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from num2words import num2words
from tqdm import tqdm

from speechllama.audio import SAMPLE_RATE, load_audio

from ..progress import progress
from .fillets import DEFAULT_ROOT, read_dialogues, save_wav, wav_duration
from .manifest import CorpusError, Utterance, summarize, write_splits

ESPEAK = "espeak-ng"
ESPEAK_HINT = "install it with 'sudo apt-get install espeak-ng'"
ESPEAK_VOICES = {"de": "de", "fr": "fr-fr", "es": "es", "it": "it", "nl": "nl", "cs": "cs", "en": "en-us"}
# male, female and klatt-synthesiser variants; the novelty ones (whisper, croak, robots) are left out
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3")
SPEED = (140, 190)  # words per minute (espeak default 175)
PITCH = (35, 65)  # 0..99 (espeak default 50)
# Short utterances keep training fast (batch memory and attention cost grow with the longest row):
# 150 characters is at most ~20 s of espeak speech (the mean is ~2.7 s) and keeps ~98% of the lines.
MAX_CHARS = 150
NUMBER_KINDS = {"cardinal": range(0, 10000), "year": range(1900, 2031), "ordinal": range(1, 101)}
NUMBER_SHARE = {"year": 0.2, "ordinal": 0.15}  # of numbers_per_lang; cardinals take the rest


@dataclass(frozen=True)
class _Item:
    """One utterance to synthesise."""

    lang: str
    key: str  # split key: the dialogue key or "num-<n>"
    name: str  # row id stem and wav name stem, unique within the language
    kind: str  # "sentence" or "number"
    text: str  # spoken, in `lang`
    english: str
    voice: str  # espeak voice, e.g. "de+m3"
    speed: int
    pitch: int

    def wav(self, out_dir: Path) -> Path:
        """Wav path; the name carries a fingerprint of voice and text so stale audio is never reused."""
        fingerprint = hashlib.sha1(f"{self.voice}|{self.speed}|{self.pitch}|{self.text}".encode()).hexdigest()[:8]
        return out_dir / "audio" / self.lang / f"{self.name}-{fingerprint}.wav"


def _voice(seed: int, lang: str, key: str) -> tuple[str, int, int]:
    """A seeded random (voice, speed, pitch) for one utterance."""
    rng = random.Random(f"{seed}:{lang}:{key}")
    variant = rng.choice(VARIANTS)
    voice = ESPEAK_VOICES.get(lang, lang) + (f"+{variant}" if variant else "")
    return voice, rng.randint(*SPEED), rng.randint(*PITCH)


def _sentence_items(lang, root, english, count, max_chars, seed, skipped) -> list[_Item]:
    """The translated Fillets lines of one language (all, or a seeded sample of ``count``)."""
    source = read_dialogues(root, lang)
    candidates = []
    for key in sorted(source.keys() & english.keys()):
        text = source[key]
        if len(text) > max_chars or len(english[key]) > max_chars:
            skipped["too_long"][lang] = skipped["too_long"].get(lang, 0) + 1
        elif text == english[key]:  # left untranslated in this language
            skipped["untranslated"][lang] = skipped["untranslated"].get(lang, 0) + 1
        else:
            candidates.append(key)
    if count is not None and count < len(candidates):
        candidates = sorted(random.Random(f"{seed}:{lang}:sentences").sample(candidates, count))
    return [
        _Item(lang, key, key, "sentence", source[key], english[key], *_voice(seed, lang, key)) for key in candidates
    ]


def _pick_numbers(kind: str, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct numbers of one kind; cardinals are spread evenly over 1..4 digits."""
    pool = NUMBER_KINDS[kind]
    count = min(count, len(pool))
    if kind != "cardinal":
        return sorted(rng.sample(pool, count))
    picked = set()
    while len(picked) < count:
        digits = rng.randint(1, 4)
        picked.add(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1))
    return sorted(picked)


def _number_items(lang, count, seed, skipped) -> list[_Item]:
    """``count`` number expressions of one language with their English words."""
    rng = random.Random(f"{seed}:{lang}:numbers")
    supported = []
    for kind in NUMBER_KINDS:
        try:
            num2words(1, lang=lang, to=kind)
            supported.append(kind)
        except (NotImplementedError, OverflowError, KeyError):
            skipped["unsupported_number_kind"].setdefault(lang, []).append(kind)
    shares = {kind: round(count * NUMBER_SHARE.get(kind, 0)) for kind in supported if kind != "cardinal"}
    shares["cardinal"] = count - sum(shares.values())
    items = []
    for kind, share in shares.items():
        for n in _pick_numbers(kind, share, rng):
            try:
                text, english = num2words(n, lang=lang, to=kind), num2words(n, lang="en", to=kind)
            except (NotImplementedError, OverflowError, ValueError) as e:
                skipped["num2words_failed"].append(f"{lang} {kind} {n}: {e}")
                continue
            name = f"num-{kind}-{n}"
            items.append(_Item(lang, f"num-{n}", name, "number", text, english, *_voice(seed, lang, name)))
    return items


def synthesize(item: _Item, wav: Path) -> float:
    """Speak ``item.text`` with espeak-ng into ``wav`` (16 kHz mono 16-bit); return seconds.

    An existing valid wav is kept. Raises CorpusError when espeak-ng fails and
    AudioError when its output is unusable (empty, silent, too short).
    """
    duration = wav_duration(wav, SAMPLE_RATE)
    if duration is not None:
        return duration
    wav.parent.mkdir(parents=True, exist_ok=True)
    raw = wav.with_name(f".{wav.stem}.espeak.wav")
    command = [ESPEAK, "-v", item.voice, "-s", str(item.speed), "-p", str(item.pitch), "-w", str(raw), "--", item.text]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not raw.exists():
            reason = result.stderr.strip() or f"exit status {result.returncode}, no output file"
            raise CorpusError(f"espeak-ng failed for {item.lang} {item.name!r} ({item.text!r}): {reason}")
        audio = load_audio(raw)
    except subprocess.TimeoutExpired:
        raise CorpusError(f"espeak-ng timed out for {item.lang} {item.name!r}") from None
    finally:
        if raw.exists():
            raw.unlink()
    save_wav(wav, audio, SAMPLE_RATE)
    return len(audio) / SAMPLE_RATE


def _rows(item: _Item, wav: Path, duration: float) -> list[Utterance]:
    """The ST row (-> English) and the ASR row (-> the spoken language) of one utterance."""
    common = {"audio": str(wav), "duration": round(duration, 3), "src_lang": item.lang, "src_text": item.text,
              "speaker": f"espeak-{item.voice}"}
    return [
        Utterance(id=f"{item.lang}-{item.name}-st", tgt_lang="en", tgt_text=item.english, **common),
        Utterance(id=f"{item.lang}-{item.name}-asr", tgt_lang=item.lang, tgt_text=item.text, **common),
    ]


def _synthesize_or_error(job):
    item, wav = job
    try:
        return synthesize(item, wav), None
    except (ValueError, RuntimeError, OSError) as e:  # AudioError, CorpusError: never stop the corpus
        return None, str(e)


def build_demo(out_dir, langs=("de", "fr", "es", "it", "nl", "cs"), sentences_per_lang=None,
               numbers_per_lang=300, seed=0, workers=2, root=DEFAULT_ROOT, max_chars=MAX_CHARS) -> dict:
    """Build the espeak demo corpus into ``out_dir``; return its stats.

    sentences_per_lang: None for every translated line of the game (~1,600-1,900
    per language), or a seeded sample of that many. numbers_per_lang: number
    expressions per language (20% years, 15% ordinals where num2words has them,
    the rest cardinals). Lines longer than ``max_chars`` (source or English) and
    lines left untranslated are skipped and counted.

    Writes ``out_dir/{train,dev,test}.jsonl``, ``out_dir/stats.json`` and the
    audio under ``out_dir/audio/<lang>/``. Resumable: existing valid wavs are
    kept. Deterministic: the same arguments give the same manifests. A line that
    espeak-ng cannot speak is reported on stderr, skipped and counted; a missing
    espeak-ng binary or Fillets data is a CorpusError.
    """
    if shutil.which(ESPEAK) is None:
        raise CorpusError(f"{ESPEAK} not found on PATH; {ESPEAK_HINT}")
    out_dir = Path(out_dir)
    skipped = {"too_long": {}, "untranslated": {}, "unsupported_number_kind": {}, "num2words_failed": [],
               "synthesis_failed": 0}
    english = read_dialogues(root, "en")
    items = []
    for lang in langs:
        if lang not in ESPEAK_VOICES:
            raise CorpusError(f"no espeak-ng voice configured for language {lang!r}; known: {sorted(ESPEAK_VOICES)}")
        items += _sentence_items(lang, root, english, sentences_per_lang, max_chars, seed, skipped)
        items += _number_items(lang, numbers_per_lang, seed, skipped)
    jobs = [(item, item.wav(out_dir)) for item in items]
    keyed, errors = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_synthesize_or_error, jobs)
        for (item, wav), (duration, error) in zip(jobs, progress(results, total=len(jobs), desc="espeak", unit="utt")):
            if error is not None:
                tqdm.write(f"skipped: {error}", file=sys.stderr)
                errors.append(error)
                continue
            keyed += [(item.key, row) for row in _rows(item, wav, duration)]
    skipped["synthesis_failed"] = len(errors)
    kinds = {item.wav(out_dir).as_posix(): item.kind for item in items}
    splits = write_splits(out_dir, keyed)
    stats = {"splits": summarize(splits, kind_of=lambda u: kinds[Path(u.audio).as_posix()]), "skipped": skipped,
             "errors": errors}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats
