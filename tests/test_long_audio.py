"""Long audio: segments cut in the pauses the CTC compressor finds, batch-independent decoding,
word timestamps by forced alignment, the CLI's --format."""

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import CORPUS_WORDS, TINY, tiny_llm_folder, tone_sequence

from speechllama import load
from speechllama.cli import main
from speechllama.inference.align import forced_align, word_frames
from speechllama.inference.api import Job
from speechllama.inference.segment import cut_frames, pause_labels, pause_runs, segment_wave

SR = 16000
TONE = {"eins": 300, "zwei": 700, "drei": 1100, "vier": 1500, "fünf": 2000}  # a "word": one tone
WORD_S = 0.4  # seconds per spoken word
PAUSE_S = 1.2  # the pause between utterances of the long file


def quiet(seconds: float, rng) -> np.ndarray:
    return (0.01 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def utterance(words: list[str], seed: int) -> np.ndarray:
    """The words' tones back to back, between 0.2-0.5 s of quiet noise."""
    rng = np.random.default_rng(seed)
    speech = tone_sequence([TONE[w] for w in words], WORD_S, seed=seed)
    before = quiet(rng.uniform(0.2, 0.5), rng)
    return np.concatenate([before, speech, quiet(rng.uniform(0.2, 0.5), rng)])


def sentences(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [list(rng.choice(list(TONE), size=rng.integers(1, 4))) for _ in range(n)]


def write_tone_corpus(folder, name: str, n: int = 24):
    """n utterances of 1-3 tone words with pauses around them (ASR + ST rows): enough variety for
    the tiny compressor to learn each tone's labels, and that a pause is none of them."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, words in enumerate(sentences(n, 0)):
        wave, text = utterance(words, i), " ".join(words)
        sf.write(folder / "audio" / f"{name}{i}.wav", wave, SR)
        base = {"audio": f"audio/{name}{i}.wav", "duration": len(wave) / SR, "src_lang": "de",
                "src_text": text}
        rows.append({"id": f"{name}{i}-asr", **base, "tgt_lang": "de", "tgt_text": text})
        rows.append({"id": f"{name}{i}-st", **base, "tgt_lang": "en", "tgt_text": text.upper()})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A stage-2 model trained (briefly) on the tone corpus, and that corpus's folder."""
    root = tmp_path_factory.mktemp("long")
    corpus = root / "corpus"
    write_tone_corpus(corpus, "train")
    write_tone_corpus(corpus, "dev", 2)
    llm = tiny_llm_folder(root / "llm", CORPUS_WORDS)
    common = ["--config", str(TINY), "--data", str(corpus)]
    assert main(["train", "ctc", *common, "--out", str(root / "ctc"), "train.max_steps=400",
                 "train.lr=0.005", "features.spec_augment=false"]) == 0
    assert main(["train", "speech-llm", *common, "--out", str(root / "s2"), "--compressor",
                 str(root / "ctc"), "--llm", str(llm), "train.max_steps=200", "train.lr=0.01",
                 "llm.lora_rank=4", "features.spec_augment=false"]) == 0
    return load(root / "s2"), corpus


@pytest.fixture(scope="module")
def long_file():
    """(wave > 2 minutes: utterances of 1-3 tone words with PAUSE_S of quiet noise between them,
    the [start, end) samples of every pause)."""
    rng = np.random.default_rng(7)
    parts, pauses, at = [], [], 0
    for k, words in enumerate(sentences(80, 1)):
        speech = tone_sequence([TONE[w] for w in words], WORD_S, seed=100 + k)
        gap = quiet(PAUSE_S, rng)
        parts += [speech, gap]
        pauses.append((at + len(speech), at + len(speech) + len(gap)))
        at += len(speech) + len(gap)
    wave = np.concatenate(parts)
    assert len(wave) / SR > 120
    return wave, pauses


def test_blank_runs_and_cuts_on_hand_made_labels():
    labels = torch.tensor([0, 0, 3, 4, 0, 5, 0, 0, 0, 6, 0]) == 0  # pause frames
    assert pause_runs(labels).tolist() == [[0, 2], [4, 5], [6, 9], [10, 11]]
    assert cut_frames(labels, max_frames=20, min_frames=2) == [(0, 11)]  # short: one segment
    # the longest blank run inside [2, 8] is frames 6..8 (clipped): cut in its middle
    assert cut_frames(labels, max_frames=8, min_frames=2) == [(0, 7), (7, 11)]
    speech = torch.zeros(25, dtype=torch.bool)  # 25 frames, no pause: hard cuts at the bound
    assert cut_frames(speech, max_frames=10, min_frames=3) == [(0, 10), (10, 20), (20, 25)]
    # the tail is never left shorter than min_frames: the last hard cut moves back
    assert cut_frames(torch.zeros(21, dtype=torch.bool), max_frames=10, min_frames=3) == \
        [(0, 10), (10, 18), (18, 21)]


def peaked(path: list[int], vocab: int = 7) -> torch.Tensor:
    """Log-probs (T, vocab) that favour label ``path[t]`` at frame t."""
    log_probs = torch.full((len(path), vocab), -6.0)
    log_probs[torch.arange(len(path)), torch.tensor(path)] = -0.05
    return log_probs.log_softmax(-1)


def test_forced_align_finds_the_known_path():
    log_probs = peaked([0, 1, 1, 0, 2, 2, 0, 0, 3, 3])  # blank a a blank b b blank blank c c
    assert forced_align(log_probs, [1, 2, 3]).tolist() == [[1, 2], [4, 5], [8, 9]]
    # labels the frames disfavour still get the best path there is: b on 4-5, then c
    assert forced_align(log_probs, [2, 3]).tolist() == [[4, 5], [8, 9]]
    # a repeated label needs a blank between its two copies
    assert forced_align(peaked([1, 1, 0, 1, 0]), [1, 1]).tolist() == [[0, 1], [3, 3]]
    assert forced_align(peaked([1, 1, 1]), [1, 1]).tolist() == [[0, 0], [2, 2]]  # forced: a _ a
    assert forced_align(log_probs[:2], [1, 1, 2]) is None  # needs 4 frames: no path in 2
    assert forced_align(log_probs, []).shape == (0, 2)


class CharLabels:
    """A CTC label set like sentencepiece chars: 0 blank, 1 unk, 2 the word start "▁", letters."""

    def __init__(self, letters="abcd"):
        self.ids = {c: k + 3 for k, c in enumerate(letters)}

    def encode(self, word: str) -> list[int]:
        letters = [c for c in word.lower() if c.isalnum()]
        return [2] + [self.ids.get(c, 1) for c in letters] if letters else []

    def decode(self, ids) -> str:
        chars = {v: k for k, v in self.ids.items()}
        return "".join(chars.get(i, " ") for i in ids)


def test_word_frames_group_labels_into_words_without_the_word_start_label():
    # frames ▁ a b _ _ _ ▁ _ c _: "ab" on frames 1-2 (its "▁" at 0 does not count), "c" on 8
    log_probs = peaked([2, 3, 4, 0, 0, 0, 2, 0, 5, 0])
    labels = CharLabels()
    assert word_frames(labels, "AB, — c", log_probs) == [("AB,", 1, 3), ("c", 8, 9)]
    assert word_frames(labels, "ab x", log_probs) is None  # "x" needs the unknown label
    assert word_frames(labels, "ab cd ab c", log_probs) is None  # more labels than frames allow


def check_segments(transcript, bound: float):
    segs = transcript.segments
    assert [s.id for s in segs] == list(range(len(segs)))
    assert segs[0].start == 0 and segs[-1].end == pytest.approx(transcript.duration)
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))  # in order, no gap, no overlap
    assert all(0 < s.end - s.start <= bound + 1e-9 for s in segs)


def test_long_file_is_cut_in_its_pauses(model, long_file):
    stt, _ = model
    wave, pauses = long_file
    [t] = stt.run([Job(wave, "asr", "de", word_timestamps=False)])
    check_segments(t, 20.0)  # the model's data.max_seconds
    assert len(t.segments) >= 7 and t.duration == pytest.approx(len(wave) / SR, abs=1e-3)
    for cut in (s.start for s in t.segments[1:]):
        assert any(a / SR <= cut <= b / SR for a, b in pauses), f"cut at {cut} s is not in a pause"
    assert t.text == " ".join(s.text for s in t.segments if s.text) and t.words is None


def test_a_file_without_pauses_gets_cuts_within_the_bound(model, monkeypatch):
    stt, _ = model
    wave = np.concatenate([tone_sequence([300, 500, 700, 900, 1100] * 4, seed=k) for k in range(6)])
    monkeypatch.setattr(stt, "max_segment_s", 4.0)
    [t] = stt.run([Job(wave, "st", "de", word_timestamps=False)])
    check_segments(t, 4.0)
    assert len(t.segments) >= 8 and t.words is None and t.language == "en"


def test_segments_of_silence_are_not_decoded(model, long_file, monkeypatch):
    stt, _ = model
    speech = long_file[0][: 10 * SR]
    wave = np.concatenate([speech, quiet(45.0, np.random.default_rng(3)), speech])  # 10+45+10 s
    bundle = stt.bundle
    spans = segment_wave(wave, bundle.model.compressor, bundle.cmvn, 10.0, 20.0,
                         pause_labels(bundle.ctc_tokenizer))
    silent = [k for k, span in enumerate(spans) if span.silent]
    assert silent and all(10 * SR < spans[k].start < spans[k].end < 55 * SR for k in silent)
    decoded = []
    decode = stt.decode
    monkeypatch.setattr(stt, "decode", lambda reqs, options=None: decoded.append(len(reqs)) or
                        decode(reqs, options))
    monkeypatch.setattr(stt, "max_segment_s", 10.0)
    [t] = stt.run([Job(wave, "asr", "de")])
    assert decoded == [len(spans) - len(silent)]  # one decode() call for every spoken segment
    assert [(s.start, s.end) for s in t.segments] == [(a.start / SR, a.end / SR) for a in spans]
    assert all(t.segments[k].text == "" for k in silent)


def test_a_job_decoded_alone_equals_it_decoded_with_others(model, long_file):
    stt, corpus = model
    wave, _ = long_file
    clip = sf.read(corpus / "audio" / "train0.wav", dtype="float32")[0]
    alone = stt.run([Job(wave, "asr", "de")])[0]
    together = stt.run([Job(clip, "st", "de"), Job(wave, "asr", "de"), Job(clip, "asr", "de"),
                        Job(wave[: 30 * SR], "st", "de")])
    assert together[1] == alone
    assert together[0].text == stt.translate(clip, src_lang="de")
    assert stt.transcribe(wave, src_lang="de") == alone.text  # the str API, stitched


def test_word_timestamps_lie_in_their_segments_in_order(model, long_file):
    stt, corpus = model
    clip = sf.read(corpus / "audio" / "train0.wav", dtype="float32")[0]
    words = sentences(24, 0)[0]
    short = stt.transcribe(clip, src_lang="de", return_segments=True)
    assert short.text == " ".join(words) and len(short.segments) == 1
    assert [w.word for w in short.words] == words
    lead = np.random.default_rng(0).uniform(0.2, 0.5)  # the quiet before the first tone (utterance)
    for k, w in enumerate(short.words):  # each word within its own tone, give or take 2 frames
        assert lead + k * WORD_S - 0.08 <= w.start < w.end <= lead + (k + 1) * WORD_S + 0.08
    t = stt.transcribe(long_file[0], src_lang="de", return_segments=True)
    assert t.words, "no word timestamps for the long file"
    assert [w.word for w in t.words] == t.text.split()
    for w in t.words:
        seg = next(s for s in t.segments if s.start <= w.start < s.end)
        assert w.start < w.end <= seg.end
    assert all(a.end <= b.start for a, b in zip(t.words, t.words[1:]))
    assert stt.translate(clip, src_lang="de", return_segments=True).words is None


def test_one_unalignable_segment_keeps_the_other_segments_word_times(model, long_file, monkeypatch):
    """A segment whose text cannot be aligned loses its own word times, not the file's: the other
    segments keep theirs, and a warning names the one left out."""
    import speechllama.inference.align as align

    stt, _ = model
    whole = stt.transcribe(long_file[0], src_lang="de", return_segments=True)
    spoken = [s.id for s in whole.segments if s.text]
    assert len(spoken) >= 3 and all(whole.segments[i].words for i in spoken)
    real, calls = align.word_frames, []

    def second_fails(*args):  # the second segment with text cannot be aligned
        calls.append(1)
        return None if len(calls) == 2 else real(*args)

    monkeypatch.setattr(align, "word_frames", second_fails)
    with pytest.warns(UserWarning, match=rf"segment\(s\) \[{spoken[1]}\]"):
        t = stt.transcribe(long_file[0], src_lang="de", return_segments=True)
    assert t.text == whole.text and t.segments[spoken[1]].words is None
    kept = [i for i in spoken if i != spoken[1]]
    assert [t.segments[i].words for i in kept] == [whole.segments[i].words for i in kept]
    assert t.words == [w for i in kept for w in whole.segments[i].words]


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> "
                     r"(\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n\n")


def parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    """(number, start, end, text) of every cue; the cues must make up the whole text."""
    cues = [(int(m[1]), 3600 * int(m[2]) + 60 * int(m[3]) + int(m[4]) + int(m[5]) / 1000,
             3600 * int(m[6]) + 60 * int(m[7]) + int(m[8]) + int(m[9]) / 1000, m[10])
            for m in SRT_CUE.finditer(text)]
    assert "".join(m[0] for m in SRT_CUE.finditer(text)) == text, "text outside SRT cues"
    return cues


def test_cli_prints_subtitles_and_verbose_json(model, long_file, tmp_path, capsys):
    stt, corpus = model
    long_wav, clip = tmp_path / "long.wav", corpus / "audio" / "train1.wav"
    sf.write(long_wav, long_file[0], SR)
    args = ["--model", str(stt.bundle.path), "--src-lang", "de"]
    assert main(["transcribe", str(long_wav), *args, "--format", "srt"]) == 0
    cues = parse_srt(capsys.readouterr().out)
    expected = stt.transcribe(str(long_wav), src_lang="de", return_segments=True)
    said = [s for s in expected.segments if s.text]
    assert [(c[1], c[2], c[3]) for c in cues] == [(s.start, s.end, s.text) for s in said]
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1)) and cues
    assert all(a[2] <= b[1] for a, b in zip(cues, cues[1:]))  # monotonic, no overlap
    assert main(["transcribe", str(long_wav), str(clip), *args, "--format", "verbose_json"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[0] == f"==> {long_wav} <==" and out[2] == f"==> {clip} <=="
    body = json.loads(out[3])
    assert body["task"] == "transcribe" and body["language"] == "de"
    assert body["text"] == stt.transcribe(str(clip), src_lang="de")
    assert [w["word"] for w in body["words"]] == body["text"].split()
    assert main(["translate", str(clip), *args, "--format", "vtt"]) == 0
    vtt = capsys.readouterr().out
    assert re.fullmatch(r"WEBVTT\n\n00:00:00\.000 --> 00:00:01\.\d{3}\n[A-ZÜ ]+\n\n", vtt), vtt


def test_bad_jobs_are_one_line_errors_that_name_them(model, long_file, monkeypatch):
    from speechllama.audio import AudioError

    stt, _ = model
    with pytest.raises(AudioError, match=r"^upload\.wav: empty audio"):
        stt.run([Job(np.zeros(0, dtype=np.float32), name="upload.wav")])
    with pytest.raises(ValueError, match=r"^upload\.wav: task must be 'asr' or 'st', got 'mt'"):
        stt.run([Job(long_file[0][:SR], "mt", name="upload.wav")])
    monkeypatch.setattr(stt, "max_segment_s", 1.5)
    with pytest.raises(ValueError, match=r"^max_segment_s must be at least 2 s, got 1.5"):
        stt.run([Job(long_file[0][: 5 * SR])])
