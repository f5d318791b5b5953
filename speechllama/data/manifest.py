"""Utterance manifests: one JSON object per line (JSONL).

Every corpus in speechllama (the espeak demo corpus, the Fillets voice acting,
CoVoST-2, LibriSpeech) ends up as the same manifest format, so training and
evaluation never need to know where the audio came from::

    {"id": "de-vit-hs-klid1-st", "audio": "audio/de/vit-hs-klid1.wav",
     "duration": 2.41, "src_lang": "de", "tgt_lang": "en",
     "src_text": "Ruhe bewahren!", "tgt_text": "Keep calm!", "speaker": "de+m3"}

Fields
    id        unique string
    audio     path of the audio file; a relative path resolves against the
              folder holding the manifest
    duration  seconds (number > 0)
    src_lang  ISO 639-1 code of the spoken language
    tgt_lang  ISO 639-1 code of the output text; equal to src_lang for ASR
    src_text  transcript of the audio (may be absent or null)
    tgt_text  the target text: the translation (ST) or the transcript (ASR)
    speaker   optional string

Splits are assigned with :func:`split_of`, a stable hash of a *content* key
(the Fillets dialogue id, ``num-<n>`` for numbers), so that the same sentence
lands in the same split in every language and every corpus built from it.
"""

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..atomic import write_text_atomic
from ..errors import UsageError, UserError

REQUIRED_FIELDS = ("id", "audio", "duration", "src_lang", "tgt_lang", "tgt_text")
OPTIONAL_FIELDS = ("src_text", "speaker")
ALL_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
DURATION_TOLERANCE = 0.1  # seconds; check_manifest compares against decoded audio
SPLITS = ("train", "dev", "test")

_LANG_CODE = re.compile(r"^[a-z]{2}$")


class ManifestError(UserError, ValueError):
    """A manifest has bad rows; the message lists ``path:line: problem`` for each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CorpusError(UserError, RuntimeError):
    """A corpus cannot be built or imported (missing tool, data or input file).

    The message is meant for the user as is: it names the file and says what to do.
    """


@dataclass(frozen=True)
class Utterance:
    """One manifest row. ``audio`` is an absolute path once read from a manifest."""

    id: str
    audio: str
    duration: float
    src_lang: str
    tgt_lang: str
    tgt_text: str
    src_text: Optional[str] = None
    speaker: Optional[str] = None

    @property
    def task(self) -> str:
        """``"asr"`` when the output is in the spoken language, else ``"st"``."""
        return "asr" if self.src_lang == self.tgt_lang else "st"


def split_of(key: str) -> str:
    """Return "test", "dev" or "train" for a content key (~10% / 10% / 80%).

    The rule is ``int(sha1(key).hexdigest(), 16) % 10``: 0 -> test, 1 -> dev,
    anything else -> train. It depends on nothing but the key, so it is stable
    across machines, languages, Python versions and corpus rebuilds.
    """
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def _row_problems(row) -> list[str]:
    """Return the problems of one decoded JSON row (empty list when it is valid)."""
    if not isinstance(row, dict):
        return [f"expected a JSON object, got {type(row).__name__}"]
    problems = [f"unknown field {key!r}" for key in row if key not in ALL_FIELDS]
    problems += [f"missing field {key!r}" for key in REQUIRED_FIELDS if key not in row]
    for key in ("id", "audio", "src_lang", "tgt_lang", "tgt_text"):
        if key in row and not isinstance(row[key], str):
            problems.append(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    for key in ("src_text", "speaker"):
        if row.get(key) is not None and not isinstance(row[key], str):
            problems.append(f"field {key!r} must be a string or null, got {type(row[key]).__name__}")
    for key in ("src_lang", "tgt_lang"):
        if isinstance(row.get(key), str) and not _LANG_CODE.match(row[key]):
            problems.append(f"field {key!r} must be an ISO 639-1 code like 'de', got {row[key]!r}")
    if isinstance(row.get("id"), str) and not row["id"]:
        problems.append("field 'id' is empty")
    if isinstance(row.get("audio"), str) and not row["audio"]:
        problems.append("field 'audio' is empty")
    if "duration" in row:
        duration = row["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            problems.append(f"field 'duration' must be a number, got {type(duration).__name__}")
        elif not duration > 0 or duration != duration or duration == float("inf"):
            problems.append(f"field 'duration' must be a finite number > 0, got {duration}")
    return problems


def _parse(path: Path) -> tuple[list[tuple[int, Utterance]], list[str]]:
    """Parse a manifest without touching audio: (line number, utterance) pairs and problems."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], [f"{path}: manifest not found"]
    except (OSError, UnicodeDecodeError) as e:
        return [], [f"{path}: cannot read manifest ({e})"]
    folder = Path(os.path.abspath(path)).parent
    rows, problems, first_line_of = [], [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{number}: bad JSON ({e.msg} at column {e.colno})")
            continue
        row_problems = _row_problems(row)
        problems += [f"{path}:{number}: {p}" for p in row_problems]
        if row_problems:
            continue
        if row["id"] in first_line_of:
            problems.append(f"{path}:{number}: duplicate id {row['id']!r} (first on line {first_line_of[row['id']]})")
            continue
        first_line_of[row["id"]] = number
        fields = {key: row.get(key) for key in ALL_FIELDS}
        fields["audio"] = str(folder / os.path.expanduser(row["audio"]))
        fields["duration"] = float(row["duration"])
        rows.append((number, Utterance(**fields)))
    return rows, problems


def read_manifest(path) -> list[Utterance]:
    """Read and validate a manifest; audio is not opened.

    Relative audio paths are resolved against the manifest's folder and stored as
    absolute paths. Raises :class:`ManifestError` listing every bad row
    (``path:line: problem``): bad JSON, missing or unknown fields, wrong types,
    duplicate ids. An empty manifest (e.g. a split of a tiny corpus) gives [].
    """
    rows, problems = _parse(Path(path))
    if problems:
        raise ManifestError(problems)
    return [utterance for _, utterance in rows]


def write_manifest(path, utterances: Iterable[Utterance]) -> None:
    """Write utterances as JSONL, atomically (a temp file renamed over ``path``).

    Audio paths below the manifest's folder are written relative to it, so a
    corpus folder can be moved or copied as a whole; other paths stay absolute.
    Optional fields that are None are left out. Raises ValueError on duplicate ids.
    """
    path = Path(path)
    folder = Path(os.path.abspath(path)).parent
    folder.mkdir(parents=True, exist_ok=True)
    seen, lines = set(), []
    for utterance in utterances:
        if utterance.id in seen:
            raise UsageError(f"{path}: duplicate utterance id {utterance.id!r}")
        seen.add(utterance.id)
        row = {key: value for key, value in asdict(utterance).items() if value is not None or key in REQUIRED_FIELDS}
        audio = Path(os.path.abspath(utterance.audio))
        if audio.is_relative_to(folder):
            row["audio"] = audio.relative_to(folder).as_posix()
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    write_text_atomic(path, "".join(lines))


def check_manifest(path, decode: bool = True) -> list[str]:
    """Return every problem of a manifest as ``path:line: message``; [] means OK.

    Checks the rows (as :func:`read_manifest` does, but collecting instead of
    raising), that every audio file exists and, with ``decode=True``, that it
    decodes with :func:`speechllama.audio.load_audio` and that its duration is
    within 0.1 s of the ``duration`` field.
    """
    from speechllama.audio import SAMPLE_RATE, AudioError, load_audio

    path = Path(path)
    rows, problems = _parse(path)
    for number, utterance in rows:
        where = f"{path}:{number}"
        if not os.path.isfile(utterance.audio):
            problems.append(f"{where}: audio file not found: {utterance.audio}")
            continue
        if not decode:
            continue
        try:
            audio = load_audio(utterance.audio)
        except AudioError as e:
            problems.append(f"{where}: audio does not decode: {e}")
            continue
        except Exception as e:  # a checker reports, it does not crash
            problems.append(f"{where}: audio does not decode: {utterance.audio}: {type(e).__name__}: {e}")
            continue
        actual = len(audio) / SAMPLE_RATE
        if abs(actual - utterance.duration) > DURATION_TOLERANCE:
            problems.append(f"{where}: duration is {utterance.duration:.3f} s but the audio lasts {actual:.3f} s")
    return sorted(problems, key=_line_order)


def _line_order(problem: str):
    """Sort key: keep problems in file-line order (file-level problems first)."""
    match = re.match(r"^(.*?):(\d+): ", problem)
    return (0, int(match.group(2))) if match else (-1, 0)


def write_splits(out_dir, keyed: Iterable[tuple[str, Utterance]]) -> dict[str, list[Utterance]]:
    """Write ``out_dir/{train,dev,test}.jsonl`` from (split key, utterance) pairs.

    The split of each utterance is :func:`split_of` of its key; rows are sorted
    by id so the files do not depend on the order work finished in. Every split
    file is written, empty or not. Returns the utterances of each split.
    """
    by_split = {split: [] for split in SPLITS}
    for key, utterance in keyed:
        by_split[split_of(key)].append(utterance)
    for split, utterances in by_split.items():
        utterances.sort(key=lambda u: u.id)
        write_manifest(Path(out_dir) / f"{split}.jsonl", utterances)
    return by_split


def summarize(by_split: dict[str, list[Utterance]], kind_of=None) -> dict:
    """Counts per split and per source language: rows per task (st/asr), distinct
    audio files, hours of distinct audio and, with ``kind_of(utterance)``, audio
    files per kind. ST and ASR rows sharing a file count its audio once."""
    summary = {}
    for split, utterances in by_split.items():
        audio = {}
        langs = {}
        for u in utterances:
            lang = langs.setdefault(u.src_lang, {"st": 0, "asr": 0, "files": {}})
            lang[u.task] += 1
            if u.audio not in lang["files"]:
                lang["files"][u.audio] = (u.duration, kind_of(u) if kind_of else None)
                audio[u.audio] = u.duration
        for lang in langs.values():
            files = lang.pop("files")
            lang["audio_files"] = len(files)
            lang["hours"] = round(sum(d for d, _ in files.values()) / 3600, 4)
            if kind_of is not None:
                kinds = [kind for _, kind in files.values()]
                lang["kinds"] = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
        summary[split] = {
            "rows": len(utterances),
            "audio_files": len(audio),
            "hours": round(sum(audio.values()) / 3600, 4),
            "langs": dict(sorted(langs.items())),
        }
    return summary
