"""Fish Fillets NG: human-translated dialogue text and human voice acting.

The game (Debian package ``fillets-ng-data``) ships every dialogue line in
English plus human translations, one Lua file per level and language::

    script/<level>/dialogs_en.lua      dialogId("vit-hs-klid1", "font_small", "Keep calm!")
    script/<level>/dialogs_de.lua      dialogId("vit-hs-klid1", "font_small", "Keep calm!")
                                       dialogStr("Ruhe bewahren!")
    script/share/bore_dialogs_de.lua   (shared lines, same format, with a prefix)

The Czech and Dutch voice acting (Debian ``fillets-ng-data-cs`` / ``-nl``) is one
Ogg Vorbis file per line, named by dialogue id::

    sound/<level>/<lang>/<dialogue-id>.ogg
    sound/share/<group>/<lang>/<dialogue-id>.ogg

:func:`build_fillets_speech` pairs those recordings with the English line (a
speech-translation row) and with the line in the spoken language (an ASR row).
"""

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..atomic import write_atomic
from ..audio import SAMPLE_RATE, load_audio
from ..progress import progress
from .manifest import CorpusError, Utterance, summarize, write_splits

DEFAULT_ROOT = "/usr/share/games/fillets-ng"
INSTALL_HINT = "install the Debian package fillets-ng-data (sudo apt-get install fillets-ng-data)"
SPEECH_HINT = (
    "install the voice acting with 'sudo apt-get install fillets-ng-data-cs fillets-ng-data-nl', "
    "or unpack it without installing: 'apt-get download fillets-ng-data-cs fillets-ng-data-nl' then "
    "'dpkg-deb -x <file>.deb <folder>' for each, and pass sound_root=<folder>"
)
_SHARE_SOUND = {"black": "blackjokes", "bore": "borejokes", "border": "border", "shout": "border"}
_NOT_SPEECH = re.compile(r"^mplayer\s")  # the 'linux' level prints shell commands, not speech
_LUA_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\n": "\n"}
# Lua tokens: whitespace, --[[block]] and -- line comments, "strings", 'strings', names, any other char
_TOKEN = re.compile(
    r"""\s+|--\[(=*)\[.*?\]\1\]|--[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|[A-Za-z_]\w*|.""", re.S
)


def _unescape(body: str) -> str:
    """Decode the escapes of a Lua short string body (without its quotes)."""

    def replace(match):
        escape = match.group(1)
        if escape.isdigit():
            return chr(int(escape))
        return _LUA_ESCAPES.get(escape, escape)  # \" \\ \' and Lua 5.1's lenient \x -> x

    return re.sub(r"\\(\d{1,3}|.)", replace, body, flags=re.S)


def _lua_calls(source: str, names=("dialogId", "dialogStr")):
    """Yield (name, args, line) for calls like ``name("a", 'b')`` with only string arguments.

    Comments are skipped; calls with non-literal arguments (``"key"..i``) are ignored.
    """
    tokens, line = [], 1
    for match in _TOKEN.finditer(source):
        text = match.group(0)
        if not text.isspace() and not text.startswith("--"):
            tokens.append((text, line))
        line += text.count("\n")
    i = 0
    while i < len(tokens):
        name, line = tokens[i]
        i += 1
        if name not in names or i >= len(tokens) or tokens[i][0] != "(":
            continue
        args, j = [], i + 1
        while j < len(tokens) and tokens[j][0][0] in "\"'" and len(tokens[j][0]) > 1:  # a string literal
            args.append(_unescape(tokens[j][0][1:-1]))
            j += 1
            if j < len(tokens) and tokens[j][0] == ",":
                j += 1
        if j < len(tokens) and tokens[j][0] == ")":
            yield name, args, line
            i = j + 1


def dialogue_files(root, lang: str) -> list[Path]:
    """The Lua dialogue files of one language: ``script/*/[<prefix>_]dialogs_<lang>.lua``.

    Regional variants (``dialogs_de_CH.lua``) are not included.
    """
    script = Path(root) / "script"
    files = sorted(script.glob(f"*/dialogs_{lang}.lua")) + sorted(script.glob(f"*/*_dialogs_{lang}.lua"))
    if not script.is_dir() or not any(script.glob("*/dialogs_en.lua")):
        raise CorpusError(f"{script}: no Fish Fillets dialogue scripts found; {INSTALL_HINT}")
    if not files:
        raise CorpusError(f"{script}: no dialogue scripts for language {lang!r} (*/dialogs_{lang}.lua)")
    return files


def _group_of(path: Path) -> tuple[str, str]:
    """(group, sound folder) of a dialogue file, as the game's ``dialogLoad`` maps them.

    ``script/city/dialogs_cs.lua`` -> ("city", "city");
    ``script/share/bore_dialogs_cs.lua`` -> ("share/bore", "share/borejokes").
    """
    folder, prefix = path.parent.name, path.name.split("dialogs_")[0].rstrip("_")
    if not prefix:
        return folder, folder
    if folder == "share":
        return f"share/{prefix}", f"share/{_SHARE_SOUND.get(prefix, prefix)}"
    return f"{folder}/{prefix}", folder  # e.g. the level posters' demo_dialogs_*.lua


def dialogue_entries(path, lang: str) -> list[dict]:
    """Parse one dialogue file into ``{"id", "font", "text", "line", "group", "sound_dir"}`` dicts.

    English text is the third argument of ``dialogId``; any other language takes
    the ``dialogStr`` that follows its ``dialogId``. Whitespace (including the
    ``\\n`` line breaks of subtitles) is collapsed to single spaces. Entries that
    are empty, hold a ``%1`` placeholder or are not speech are left out.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read dialogue script ({e})") from None
    group, sound_dir = _group_of(path)
    entries, current = [], None
    for name, args, line in _lua_calls(source):
        if name == "dialogId" and len(args) == 3:
            current = {"id": args[0], "font": args[1], "line": line, "group": group, "sound_dir": sound_dir}
            if lang == "en":
                entries.append({**current, "text": args[2]})
        elif name == "dialogStr" and len(args) == 1 and current is not None and lang != "en":
            entries.append({**current, "text": args[0]})
            current = None
    kept = []
    for entry in entries:
        entry["text"] = " ".join(entry["text"].split())
        if entry["text"] and "%" not in entry["text"] and not _NOT_SPEECH.match(entry["text"]):
            kept.append(entry)
    return kept


def _entries_by_key(root, lang: str) -> dict[str, dict]:
    """Dialogue key -> entry over all dialogue files of a language.

    A few ids are reused by several levels for different lines (``rand-0-0`` in
    'electromagnet' and 'keys'). The key is the bare id in the first group (in
    sorted file order) whose *English* script defines it, ``<id>@<group>``
    elsewhere, e.g. ``rand-0-0@keys``; deciding on the English scripts keeps the
    keys of all languages in step.
    """
    first_group = {}
    for path in dialogue_files(root, "en"):
        for entry in dialogue_entries(path, "en"):
            first_group.setdefault(entry["id"], entry["group"])
    entries = {}
    for path in dialogue_files(root, lang):
        for entry in dialogue_entries(path, lang):
            home = first_group.get(entry["id"], entry["group"])
            key = entry["id"] if entry["group"] == home else f"{entry['id']}@{entry['group']}"
            entries.setdefault(key, {**entry, "key": key})
    return entries


def read_dialogues(root=DEFAULT_ROOT, lang: str = "en") -> dict[str, str]:
    """Return ``{dialogue key: text}`` for one language over all levels of the game.

    ``root`` is the fillets-ng data folder (the one holding ``script/``). The key
    is the dialogue id (``vit-hs-klid1``), or ``<id>@<group>`` for the few ids
    that several levels reuse for different lines (see :func:`_entries_by_key`).
    Raises :class:`CorpusError` when ``root`` holds no dialogue scripts.
    """
    return {key: entry["text"] for key, entry in _entries_by_key(root, lang).items()}


def _find_sound_root(sound_root) -> Path:
    """Accept the game data folder or a ``dpkg-deb -x`` folder (with ``usr/share/games/...``)."""
    sound_root = Path(sound_root)
    unpacked = sound_root / "usr/share/games/fillets-ng"
    return unpacked if (unpacked / "sound").is_dir() else sound_root


def save_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float audio as 16-bit PCM wav atomically (an interrupted build leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16",
                                            format="WAV"))


def wav_duration(path, sample_rate: int, min_seconds: float = 0.1):
    """Duration of an existing wav written by :func:`save_wav`, or None if it is missing or unfit."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):
        return None
    if info.samplerate != sample_rate or info.channels != 1 or info.frames < min_seconds * sample_rate:
        return None
    return info.frames / sample_rate


def convert_audio(src, dst) -> float:
    """Decode ``src`` (any format, rate, channels) to 16 kHz mono 16-bit ``dst``; return seconds.

    An existing valid ``dst`` is kept (resumable builds). Raises AudioError for bad input.
    """
    duration = wav_duration(dst, SAMPLE_RATE)
    if duration is None:
        audio = load_audio(src)
        save_wav(dst, audio, SAMPLE_RATE)
        duration = len(audio) / SAMPLE_RATE
    return duration


def _convert_or_error(job):
    """Run :func:`convert_audio` for one job; return (seconds, None) or (None, error message)."""
    try:
        return convert_audio(job["src"], job["dst"]), None
    except (ValueError, RuntimeError, OSError) as e:  # AudioError is a ValueError; never stop the corpus
        return None, str(e)


def _speech_jobs(out_dir: Path, langs, root, sound_root, stats) -> list[dict]:
    """Find each line's recording where the game looks for it; count what is left out."""
    english = read_dialogues(root, "en")
    sound = _find_sound_root(sound_root) / "sound"
    jobs = []
    for lang in langs:
        recordings = set(sound.glob(f"*/{lang}/*.ogg")) | set(sound.glob(f"share/*/{lang}/*.ogg"))
        if not recordings:
            raise CorpusError(f"{sound}: no '{lang}' voice acting (sound/<level>/{lang}/<id>.ogg); {SPEECH_HINT}")
        used = set()
        for key, entry in sorted(_entries_by_key(root, lang).items()):
            src = sound / entry["sound_dir"] / lang / f"{entry['id']}.ogg"
            if src not in recordings or key not in english:
                continue
            used.add(src)
            jobs.append({
                "lang": lang, "key": key, "src": src, "dst": out_dir / "audio" / lang / f"{key}.wav",
                "text": entry["text"], "english": english[key],
                "speaker": f"fillets-{lang}-{entry['font'].removeprefix('font_')}",
            })
        stats["langs"][lang] = {"recordings": len(recordings), "matched": len(used)}
        stats["skipped"][f"{lang}_recordings_without_text"] = len(recordings - used)
    return jobs


def build_fillets_speech(out_dir, langs=("cs", "nl"), root=DEFAULT_ROOT, sound_root=None, workers: int = 2) -> dict:
    """Build a corpus from the human Czech/Dutch voice acting of Fish Fillets NG.

    Each recording ``sound/<level>/<lang>/<id>.ogg`` whose dialogue id has text in
    ``<lang>`` and in English gives two rows sharing one 16 kHz mono wav
    (``out_dir/audio/<lang>/<id>.wav``): ``<lang>-<id>-st`` (tgt_lang "en", the
    English line) and ``<lang>-<id>-asr`` (the line in ``<lang>``). The split is
    ``split_of(<id>)``, the same for every language and the same as the demo corpus.

    root: game data folder holding ``script/`` (package fillets-ng-data).
    sound_root: folder holding ``sound/<level>/<lang>/`` (default ``root``, where the
    Debian packages install it) or a folder the .deb files were unpacked into.
    Writes ``out_dir/{train,dev,test}.jsonl`` and ``out_dir/stats.json``; returns the stats.
    Recordings that fail to decode are reported on stderr, skipped and counted.
    Raises CorpusError when the scripts or a language's recordings are missing.
    """
    out_dir = Path(out_dir)
    stats = {"langs": {}, "skipped": {"bad_audio": 0}, "errors": []}
    jobs = _speech_jobs(out_dir, langs, root, sound_root or root, stats)
    keyed = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_convert_or_error, jobs)
        for job, (duration, error) in zip(jobs, progress(results, total=len(jobs), desc="fillets speech", unit="file")):
            if error is not None:
                tqdm.write(f"skipped: {error}", file=sys.stderr)
                stats["skipped"]["bad_audio"] += 1
                stats["errors"].append(error)
                continue
            common = {"audio": str(job["dst"]), "duration": round(duration, 3), "src_lang": job["lang"],
                      "src_text": job["text"], "speaker": job["speaker"]}
            name = f"{job['lang']}-{job['key']}"
            st = Utterance(id=f"{name}-st", tgt_lang="en", tgt_text=job["english"], **common)
            asr = Utterance(id=f"{name}-asr", tgt_lang=job["lang"], tgt_text=job["text"], **common)
            keyed += [(job["key"], st), (job["key"], asr)]
    stats["splits"] = summarize(write_splits(out_dir, keyed))
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return stats
