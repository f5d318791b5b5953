"""Importers that turn public corpora into speechllama manifests (audio is not copied).

* CoVoST-2 (speech translation X->en / en->X over Common Voice clips)
* LibriSpeech (English ASR)

Both return a small report ``{"rows": n, "skipped": {reason: count}, "problems": [...]}``
and print the first problems to stderr; a bad row or clip never stops an import.
"""

import csv
import re
import sys
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from ..progress import progress
from .manifest import CorpusError, Utterance, write_manifest

MAX_PRINTED = 20  # problems printed to stderr; all of them are in the report
_COVOST_NAME = re.compile(r"covost_v2\.([A-Za-z]+(?:-[A-Za-z]+)?)_([A-Za-z]+(?:-[A-Za-z]+)?)(?:\.|$)")
COVOST_REQUIRED = ("path", "translation")  # plus optional sentence, client_id, split


def _iso(code: str) -> str:
    """Common Voice locale -> ISO 639-1: 'zh-CN' -> 'zh', 'sv-SE' -> 'sv'."""
    return code.split("-")[0].lower()


def _duration(path: Path):
    """(seconds, None) for a readable audio file, else (None, reason)."""
    if not path.is_file():
        return None, "missing_clip"
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):  # libsndfile errors are RuntimeErrors
        return None, "unreadable_clip"
    if info.samplerate <= 0 or info.frames <= 0:
        return None, "unreadable_clip"
    return info.frames / info.samplerate, None


class _Report:
    """Counts rows and skipped items; keeps every problem message."""

    def __init__(self):
        self.rows, self.skipped, self.problems = 0, {}, []

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.problems.append(message)
        if len(self.problems) <= MAX_PRINTED:
            tqdm.write(f"skipped: {message}", file=sys.stderr)

    def finish(self, what: str, out_manifest, utterances: list[Utterance]) -> dict:
        if not utterances:
            raise CorpusError(f"{what}: no usable rows; first problems:\n" + "\n".join(self.problems[:MAX_PRINTED]))
        write_manifest(out_manifest, utterances)
        self.rows = len(utterances)
        if len(self.problems) > MAX_PRINTED:
            tqdm.write(f"... {len(self.problems) - MAX_PRINTED} more problems (see the report)", file=sys.stderr)
        return {"rows": self.rows, "skipped": dict(self.skipped), "problems": list(self.problems)}


def _covost_langs(tsv_path: Path, src_lang, tgt_lang) -> tuple[str, str]:
    """Languages from the arguments, else from a file name like ``covost_v2.de_en.train.tsv``."""
    match = _COVOST_NAME.search(tsv_path.name)
    if match:
        src_lang = src_lang or _iso(match.group(1))
        tgt_lang = tgt_lang or _iso(match.group(2))
    if not src_lang or not tgt_lang:
        raise CorpusError(f"{tsv_path}: cannot tell the languages from the file name "
                          "(expected covost_v2.<src>_<tgt>...tsv); pass src_lang= and tgt_lang=")
    return src_lang, tgt_lang


def _read_tsv(tsv_path: Path):
    """Yield (line number, row dict or None, problem) for each data line of a CoVoST TSV.

    Quoting is disabled: CoVoST text contains bare quote characters.
    """
    try:
        f = open(tsv_path, encoding="utf-8", newline="")
    except OSError as e:
        raise CorpusError(f"{tsv_path}: cannot open ({e.strerror})") from None
    with f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        missing = [c for c in COVOST_REQUIRED if header is None or c not in header]
        if missing:
            raise CorpusError(f"{tsv_path}:1: header lacks column(s) {', '.join(missing)}; got {header}")
        try:
            for fields in reader:
                if len(fields) != len(header):
                    yield reader.line_num, None, f"expected {len(header)} tab-separated fields, got {len(fields)}"
                else:
                    yield reader.line_num, dict(zip(header, fields)), None
        except UnicodeDecodeError as e:
            raise CorpusError(f"{tsv_path}:{reader.line_num + 1}: not UTF-8 text ({e.reason})") from None


def import_covost2(tsv_path, clips_dir, out_manifest, src_lang=None, tgt_lang=None, split=None) -> dict:
    """Import a CoVoST-2 TSV as speech-translation rows (src_text = sentence, tgt_text = translation).

    tsv_path: ``covost_v2.<src>_<tgt>.<split>.tsv`` (columns path, sentence,
    translation, client_id) or the release file ``covost_v2.<src>_<tgt>.tsv``
    (with a ``split`` column; pass ``split="train"|"dev"|"test"`` to keep one,
    "train" includes CoVoST's "train_covost" rows). ``sentence`` and ``client_id``
    may be absent. clips_dir: the Common Voice ``clips/`` folder; the audio is
    ``clips_dir/<path>``, referenced in place, its duration read from the header.
    Languages default to those in the file name. Missing or unreadable clips and
    malformed rows are reported (``file:line``), skipped and counted. Returns the report.
    """
    tsv_path, clips_dir = Path(tsv_path), Path(clips_dir)
    src_lang, tgt_lang = _covost_langs(tsv_path, src_lang, tgt_lang)
    report, utterances, seen = _Report(), [], set()
    for line, row, problem in progress(_read_tsv(tsv_path), desc=f"covost2 {tsv_path.name}", unit="row"):
        where = f"{tsv_path}:{line}"
        if problem is None and (not row["path"] or not row["translation"].strip()):
            problem = "empty path or translation"
        if problem is not None:
            report.skip("malformed_row", f"{where}: {problem}")
            continue
        if split is not None:
            if "split" not in row:
                raise CorpusError(f"{tsv_path}: split={split!r} given but the file has no 'split' column")
            if row["split"] != split and not (split == "train" and row["split"] == "train_covost"):
                continue
        if row["path"] in seen:
            report.skip("duplicate_path", f"{where}: clip {row['path']} already listed")
            continue
        seen.add(row["path"])
        audio = clips_dir / row["path"]
        duration, reason = _duration(audio)
        if reason is not None:
            report.skip(reason, f"{where}: {reason.replace('_', ' ')} {audio}")
            continue
        utterances.append(Utterance(
            id=f"covost2-{src_lang}-{tgt_lang}-{Path(row['path']).stem}", audio=str(audio),
            duration=round(duration, 3), src_lang=src_lang, tgt_lang=tgt_lang,
            src_text=row.get("sentence") or None, tgt_text=row["translation"].strip(),
            speaker=row.get("client_id") or None,
        ))
    return report.finish(str(tsv_path), out_manifest, utterances)


def import_librispeech(root, out_manifest, lang: str = "en") -> dict:
    """Import LibriSpeech (or any corpus in its layout) as ASR rows.

    Layout: ``root/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines
    ``<utt-id> TRANSCRIPT`` and ``<utt-id>.flac`` beside it (``root`` may also be a
    folder above, e.g. holding dev-clean/ and test-clean/). Each utterance gives one
    row with src_text = tgt_text = the transcript, as written, and speaker = the
    first part of the id. Missing or unreadable audio and malformed lines are
    reported (``file:line``), skipped and counted. Returns the report.
    """
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise CorpusError(f"{root}: no LibriSpeech transcripts (<speaker>/<chapter>/*.trans.txt) found")
    report, utterances, seen = _Report(), [], set()
    for trans in progress(transcripts, desc="librispeech", unit="chapter"):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            report.skip("unreadable_transcript", f"{trans}: cannot read ({e})")
            continue
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                report.skip("malformed_line", f"{trans}:{number}: expected '<utterance-id> TRANSCRIPT'")
                continue
            if utt_id in seen:
                report.skip("duplicate_id", f"{trans}:{number}: utterance {utt_id} already listed")
                continue
            seen.add(utt_id)
            audio = trans.parent / f"{utt_id}.flac"
            duration, reason = _duration(audio)
            if reason is not None:
                report.skip(reason, f"{trans}:{number}: {reason.replace('_', ' ')} {audio}")
                continue
            utterances.append(Utterance(
                id=f"librispeech-{utt_id}", audio=str(audio), duration=round(duration, 3), src_lang=lang,
                tgt_lang=lang, src_text=text.strip(), tgt_text=text.strip(), speaker=utt_id.split("-")[0],
            ))
    return report.finish(str(root), out_manifest, utterances)
