"""CoVoST-2 and LibriSpeech importers on tiny fixtures in the real layouts."""

import numpy as np
import pytest
import soundfile as sf

from speechllama.data import (
    CorpusError,
    check_manifest,
    import_covost2,
    import_librispeech,
    read_manifest,
)

CAN_WRITE_MP3 = "MP3" in sf.available_formats()


def noise(path, seconds, sample_rate, seed=0, **kwargs):
    """Write a short noise clip (not silence: silent audio is rejected)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * sample_rate)).astype(np.float32)
    sf.write(path, audio, sample_rate, **kwargs)
    return path


def clip(clips, name, seconds, seed=0):
    """A Common Voice clip: 48 kHz mp3 when libsndfile can write it, else Ogg Vorbis under the same name."""
    if CAN_WRITE_MP3:
        return noise(clips / name, seconds, 48000, seed, format="MP3", subtype="MPEG_LAYER_III")
    return noise(clips / name, seconds, 48000, seed, format="OGG", subtype="VORBIS")


def tsv(path, header, rows):
    path.write_text("\n".join("\t".join(fields) for fields in [header] + rows) + "\n", encoding="utf-8")
    return path


def test_import_covost2_split_file(tmp_path):
    clips = tmp_path / "cv" / "de" / "clips"
    clip(clips, "common_voice_de_1.mp3", 1.0)
    clip(clips, "common_voice_de_2.mp3", 1.5, seed=1)
    path = tsv(tmp_path / "covost_v2.de_en.train.tsv", ["path", "sentence", "translation", "client_id"], [
        ["common_voice_de_1.mp3", 'Er sagte "Hallo".', 'He said "hello".', "spk1"],
        ["common_voice_de_2.mp3", '"Zitat" am Anfang', '"Quote" at the start', "spk2"],
        ["common_voice_de_3.mp3", "Fehlt.", "Missing.", "spk3"],  # line 4: no such clip
        ["common_voice_de_4.mp3", "nur zwei Felder"],  # line 5: malformed
    ])
    out = tmp_path / "manifests" / "covost_train.jsonl"
    report = import_covost2(path, clips, out)

    assert report["rows"] == 2
    assert report["skipped"] == {"missing_clip": 1, "malformed_row": 1}
    assert any(p.startswith(f"{path}:4: missing clip") for p in report["problems"])
    assert any(p.startswith(f"{path}:5: expected 4 tab-separated fields, got 2") for p in report["problems"])
    first, second = read_manifest(out)
    assert (first.src_lang, first.tgt_lang, first.task) == ("de", "en", "st")
    assert first.src_text == 'Er sagte "Hallo".' and first.tgt_text == 'He said "hello".'  # quotes kept
    assert second.tgt_text == '"Quote" at the start' and second.speaker == "spk2"
    assert first.audio == str(clips / "common_voice_de_1.mp3")
    assert abs(second.duration - 1.5) < 0.1
    assert check_manifest(out) == []  # the clips decode through load_audio, durations agree


def test_import_covost2_release_file_with_split_column(tmp_path):
    clips = tmp_path / "clips"
    for n in range(1, 4):
        clip(clips, f"common_voice_zh-CN_{n}.mp3", 0.5, seed=n)
    path = tsv(tmp_path / "covost_v2.zh-CN_en.tsv", ["path", "sentence", "translation", "split"], [
        ["common_voice_zh-CN_1.mp3", "你好", "Hello", "train"],
        ["common_voice_zh-CN_2.mp3", "再见", "Goodbye", "dev"],
        ["common_voice_zh-CN_3.mp3", "谢谢", "Thanks", "train_covost"],
    ])
    report = import_covost2(path, clips, tmp_path / "train.jsonl", split="train")
    rows = read_manifest(tmp_path / "train.jsonl")
    assert report["rows"] == 2 and [u.tgt_text for u in rows] == ["Hello", "Thanks"]
    assert rows[0].src_lang == "zh" and rows[0].speaker is None
    assert import_covost2(path, clips, tmp_path / "dev.jsonl", split="dev")["rows"] == 1


def test_import_covost2_errors(tmp_path):
    path = tsv(tmp_path / "mine.tsv", ["path", "sentence", "translation"], [["a.mp3", "x", "y"]])
    with pytest.raises(CorpusError, match="src_lang="):
        import_covost2(path, tmp_path, tmp_path / "out.jsonl")
    with pytest.raises(CorpusError, match="no usable rows"):
        import_covost2(path, tmp_path, tmp_path / "out.jsonl", src_lang="de", tgt_lang="en")
    bad_header = tsv(tmp_path / "covost_v2.de_en.tsv", ["file", "text"], [["a.mp3", "x"]])
    with pytest.raises(CorpusError, match=r"covost_v2.de_en.tsv:1: header lacks column\(s\) path, translation"):
        import_covost2(bad_header, tmp_path, tmp_path / "out.jsonl")


def test_import_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = root / "84" / "121123"
    noise(chapter / "84-121123-0000.flac", 1.2, 16000, format="FLAC")
    noise(chapter / "84-121123-0001.flac", 0.7, 16000, seed=1, format="FLAC")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n"
        "84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 THE STAIRCASE GROANED\n"  # line 3: no flac
        "84-121123-0003\n"  # line 4: malformed
    )
    other = root / "174" / "50561"
    noise(other / "174-50561-0000.flac", 0.9, 16000, seed=2, format="FLAC")
    (other / "174-50561.trans.txt").write_text("174-50561-0000 FORGOTTEN TOO\n")

    out = tmp_path / "libri.jsonl"
    report = import_librispeech(tmp_path / "LibriSpeech", out)
    assert report["rows"] == 3 and report["skipped"] == {"missing_clip": 1, "malformed_line": 1}
    trans = chapter / "84-121123.trans.txt"
    assert any(p.startswith(f"{trans}:3: missing clip") for p in report["problems"])
    assert any(p.startswith(f"{trans}:4: expected '<utterance-id> TRANSCRIPT'") for p in report["problems"])
    rows = {u.id: u for u in read_manifest(out)}
    u = rows["librispeech-84-121123-0001"]
    assert (u.task, u.src_lang, u.speaker) == ("asr", "en", "84")
    assert u.src_text == u.tgt_text == "BUT IN LESS THAN FIVE MINUTES"
    assert abs(u.duration - 0.7) < 1e-3 and rows["librispeech-174-50561-0000"].speaker == "174"
    assert check_manifest(out) == []

    with pytest.raises(CorpusError, match="no LibriSpeech transcripts"):
        import_librispeech(tmp_path / "empty", tmp_path / "x.jsonl")
