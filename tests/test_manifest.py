"""Manifest format: read/write round trip, validation messages, split rule."""

import hashlib
import json
import os

import numpy as np
import pytest
import soundfile as sf

from speechllama.data import (
    ManifestError,
    Utterance,
    check_manifest,
    read_manifest,
    split_of,
    write_manifest,
)


def noise_wav(path, seconds=0.5, sample_rate=16000, seed=0):
    """A short wav of quiet noise (not silence: silence is rejected as audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * sample_rate)).astype(np.float32)
    sf.write(path, audio, sample_rate, subtype="PCM_16")
    return path


def row(**overrides):
    base = {"id": "u1", "audio": "a.wav", "duration": 0.5, "src_lang": "de", "tgt_lang": "en",
            "src_text": "Hallo", "tgt_text": "Hello"}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not ...}


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_round_trip_and_relative_paths(tmp_path):
    corpus = tmp_path / "corpus"
    inside = noise_wav(corpus / "audio" / "a.wav")
    outside = noise_wav(tmp_path / "elsewhere" / "b.wav")
    utterances = [
        Utterance(id="a", audio=str(inside), duration=0.5, src_lang="de", tgt_lang="en", tgt_text="Hello",
                  src_text="Hallo", speaker="s1"),
        Utterance(id="b", audio=str(outside), duration=0.5, src_lang="cs", tgt_lang="cs", tgt_text="ahoj"),
    ]
    path = corpus / "train.jsonl"
    write_manifest(path, utterances)

    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert raw[0]["audio"] == "audio/a.wav"  # below the manifest folder: relative
    assert raw[1]["audio"] == str(outside)  # elsewhere: absolute
    assert "src_text" not in raw[1] and "speaker" not in raw[1]  # None fields are left out
    assert read_manifest(path) == utterances
    assert [u.task for u in utterances] == ["st", "asr"]
    assert not [name for name in os.listdir(corpus) if name.endswith(".tmp")]  # atomic write left nothing behind

    # the corpus folder can move: relative paths resolve against the manifest's folder
    moved = tmp_path / "moved"
    os.rename(corpus, moved)
    first = read_manifest(moved / "train.jsonl")[0]
    assert first.audio == str(moved / "audio" / "a.wav") and os.path.isabs(first.audio)
    assert check_manifest(moved / "train.jsonl") == []


def test_null_src_text_and_empty_manifest(tmp_path):
    noise_wav(tmp_path / "a.wav")
    path = write_lines(tmp_path / "m.jsonl", [row(src_text=None)])
    assert read_manifest(path)[0].src_text is None
    assert read_manifest(write_lines(tmp_path / "empty.jsonl", [])) == []


def test_write_rejects_duplicate_ids(tmp_path):
    u = Utterance(id="x", audio=str(tmp_path / "a.wav"), duration=1.0, src_lang="de", tgt_lang="en", tgt_text="t")
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(tmp_path / "m.jsonl", [u, u])


def test_check_manifest_names_file_and_line(tmp_path):
    noise_wav(tmp_path / "a.wav", seconds=0.5)
    (tmp_path / "notaudio.wav").write_text("this is not audio\n")
    path = write_lines(tmp_path / "bad.jsonl", [
        row(id="ok"),                                # 1: fine
        '{"id": "broken", ',                         # 2: bad JSON
        row(id="nodur", duration=...),               # 3: missing field
        row(id="extra", colour="red"),               # 4: unknown field
        row(id="wrongtype", duration="long"),        # 5: wrong type
        row(id="gone", audio="missing.wav"),         # 6: missing audio file
        row(id="junk", audio="notaudio.wav"),        # 7: not audio
        row(id="ok"),                                # 8: duplicate id
        row(id="long", duration=3.0),                # 9: duration mismatch
    ])
    problems = check_manifest(path)
    text = "\n".join(problems)
    expected = {
        2: "bad JSON", 3: "missing field 'duration'", 4: "unknown field 'colour'",
        5: "field 'duration' must be a number", 6: "audio file not found", 7: "does not decode",
        8: "duplicate id 'ok'", 9: "duration is 3.000 s",
    }
    for line, message in expected.items():
        assert any(p.startswith(f"{path}:{line}: ") and message in p for p in problems), (line, text)
    assert not any(p.startswith(f"{path}:1: ") for p in problems)
    assert len(problems) == len(expected)

    # read_manifest raises one error listing every bad row (it does not open audio)
    with pytest.raises(ManifestError) as error:
        read_manifest(path)
    assert {int(p.split(":")[-2]) for p in error.value.problems} == {2, 3, 4, 5, 8}
    assert f"{path}:4: unknown field 'colour'" in str(error.value)

    # without decoding, only existence is checked
    assert [p for p in check_manifest(path, decode=False) if "decode" in p or "duration is" in p] == []


@pytest.mark.parametrize("bad, message", [
    ({"id": 7}, "field 'id' must be a string"),
    ({"src_lang": "deu"}, "ISO 639-1"),
    ({"duration": 0}, "must be a finite number > 0"),
    ({"duration": True}, "must be a number"),
    ({"speaker": 3}, "'speaker' must be a string or null"),
])
def test_field_validation(tmp_path, bad, message):
    path = write_lines(tmp_path / "m.jsonl", [row(**bad)])
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_missing_manifest(tmp_path):
    assert check_manifest(tmp_path / "nope.jsonl") == [f"{tmp_path / 'nope.jsonl'}: manifest not found"]


def test_split_of_is_the_sha1_rule():
    for key in ["vit-hs-klid1", "num-0", "num-1999", "k1-pap-sakris@cabin2", "ü"]:
        digest = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest(), "big")
        assert split_of(key) == {0: "test", 1: "dev"}.get(digest % 10, "train"), key


def test_split_of_distribution():
    splits = [split_of(f"num-{n}") for n in range(1000)]
    assert 60 <= splits.count("test") <= 140
    assert 60 <= splits.count("dev") <= 140
    assert 720 <= splits.count("train") <= 880
