"""The server through the official ``openai`` client against a real uvicorn server on 127.0.0.1:
every response format of both endpoints, long audio, served == offline under concurrency, and
OpenAI-shaped errors for bad requests after which the server keeps serving."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import soundfile as sf
from serve_helpers import (API_KEY, MAX_SECONDS, SR, free_socket, live_server, long_wave, trained_model,
                           write_clips)

from speechllama import load
from speechllama.serve import create_app

UPLOAD_MB = 8  # the test server's upload cap: the long file (~4 MB) fits, the oversize one does not
SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)\n\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, openai client, offline model, test clips): the server decodes with its own copy
    of the model, loaded as ``speechllama.load`` does offline."""
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("clips"), 8)
    app = create_app(load(run), "tiny", api_key=API_KEY, max_upload_mb=UPLOAD_MB)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        yield url, client, load(run), clips


def _transcribe(client, path, **kw):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(file=f, model="tiny", **kw)


def _translate(client, path, language=None, **kw):
    """OpenAI's translations form has no ``language``; the server takes it as the source language."""
    if language:
        kw["extra_body"] = {"language": language}
    if "timestamp_granularities" in kw:  # not in OpenAI's translations form either
        kw.setdefault("extra_body", {})["timestamp_granularities"] = kw.pop("timestamp_granularities")
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client marks the endpoint legacy
        return client.audio.translations.create(file=f, model="tiny", **kw)


def _seconds(h, m, s, ms) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def test_models_and_health(served):
    url, client, _, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["auth"] and "de" in health["languages"]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="transcript"' in page.text
    assert httpx.get(f"{url}/static/app.js").status_code == 200


@pytest.mark.parametrize("task", ["asr", "st"])
def test_every_response_format(served, task):
    _, client, offline, clips = served
    call = _transcribe if task == "asr" else _translate
    expected = (offline.transcribe if task == "asr" else offline.translate)(
        str(clips[1]), src_lang="de", return_segments=True)
    assert expected.text == ("vier fünf" if task == "asr" else "VIER FÜNF")
    assert call(client, clips[1], language="de").text == expected.text  # json, the default
    assert call(client, clips[1], language="de", response_format="text").strip() == expected.text
    verbose = call(client, clips[1], language="German", response_format="verbose_json")
    assert verbose.task == ("transcribe" if task == "asr" else "translate")
    assert verbose.language == ("de" if task == "asr" else "en")
    assert verbose.duration == pytest.approx(sf.info(clips[1]).duration, abs=1e-3)
    assert verbose.text == expected.text
    assert [(s.id, s.start, s.end, s.text) for s in verbose.segments] == \
        [(s.id, s.start, s.end, s.text) for s in expected.segments]

    srt = call(client, clips[1], language="de", response_format="srt")
    cues = SRT_CUE.findall(srt)
    assert "".join(m.group(0) for m in SRT_CUE.finditer(srt)) == srt  # nothing but cues
    assert [c[0] for c in cues] == [str(k) for k in range(1, len(cues) + 1)]
    assert " ".join(c[9] for c in cues) == expected.text
    assert _seconds(*cues[-1][5:9]) == pytest.approx(verbose.duration, abs=1e-3)

    vtt = call(client, clips[1], language="de", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    body = vtt[len("WEBVTT\n\n"):]
    assert "".join(m.group(0) for m in VTT_CUE.finditer(body)) == body
    cues = VTT_CUE.findall(body)
    assert " ".join(c[8] for c in cues) == expected.text
    assert _seconds(*cues[0][:4]) == 0.0


def test_word_timestamps(served):
    _, client, offline, clips = served
    out = _transcribe(client, clips[0], language="de", response_format="verbose_json",
                      timestamp_granularities=["word", "segment"])
    expected = offline.transcribe(str(clips[0]), src_lang="de", return_segments=True)
    assert [w.word for w in out.words] == out.text.split() == expected.text.split()
    assert [(w.start, w.end) for w in out.words] == [(w.start, w.end) for w in expected.words]
    times = [t for w in out.words for t in (w.start, w.end)]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= out.duration
    plain = _transcribe(client, clips[0], language="de", response_format="verbose_json")
    assert plain.words is None  # words only when asked for, as OpenAI's API


def test_long_file_gets_ordered_segments(served, tmp_path):
    """> 2 minutes of clips and pauses: segments cover the file in order without overlap, none longer
    than the model's training clips (MAX_SECONDS); served == offline. (Where the cuts fall is
    speechllama.segment's; this tiny compressor labels pauses as words, so here they are hard cuts.)"""
    _, client, offline, _ = served
    wave, _ = long_wave(130.0)
    path = tmp_path / "long.wav"
    sf.write(path, wave, SR)
    out = _transcribe(client, path, language="de", response_format="verbose_json")
    segs = out.segments
    assert out.duration == pytest.approx(len(wave) / SR, abs=1e-3) and out.duration > 120
    assert segs[0].start == 0 and segs[-1].end == pytest.approx(out.duration, abs=1e-3)
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))  # in order, no overlap, no gap
    assert [s.id for s in segs] == list(range(len(segs)))
    assert len(segs) >= 130 / MAX_SECONDS and all(0 < s.end - s.start <= MAX_SECONDS for s in segs)
    assert out.text == " ".join(s.text for s in segs if s.text)
    expected = offline.transcribe(str(path), src_lang="de", return_segments=True)
    assert [(s.start, s.end, s.text) for s in segs] == [(s.start, s.end, s.text) for s in expected.segments]
    srt = _transcribe(client, path, language="de", response_format="srt")
    assert len(SRT_CUE.findall(srt)) == sum(1 for s in segs if s.text)


def test_no_temporary_file(served, tmp_path, monkeypatch):
    """A 1.3 MB upload (past the 1 MB where Starlette's own form parser spools to a temporary file)
    is read and decoded in memory: no temporary file is made (the server runs in this process),
    and Python's temporary folder, pointed at an empty one, stays empty."""
    _, client, _, _ = served
    wave, _ = long_wave(40.0)
    path = tmp_path / "upload.wav"
    sf.write(path, wave, SR)
    spool, made = tmp_path / "tmp", []
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        def spy(*args, _make=getattr(tempfile, name), _name=name, **kwargs):
            made.append(_name)
            return _make(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, spy)
    assert path.stat().st_size > 2**20 and _transcribe(client, path, language="de").text
    assert made == [] and list(spool.iterdir()) == []


def test_served_equals_offline_under_32_concurrent_requests(served):
    url, client, offline, clips = served
    cases = [(task, k, lang) for k in range(len(clips)) for task in ("asr", "st") for lang in ("de", None)]
    assert len(cases) == 32
    expected = [(offline.transcribe if task == "asr" else offline.translate)(str(clips[k]), src_lang=lang)
                for task, k, lang in cases]
    before = httpx.get(f"{url}/health").json()

    def one(case):
        task, k, lang = case
        call = _transcribe if task == "asr" else _translate
        return call(client, clips[k], **({"language": lang} if lang else {})).text

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, cases))
    assert got == expected
    after = httpx.get(f"{url}/health").json()
    print(f"32 requests in {after['batches'] - before['batches']} batches")


def _error(response: httpx.Response, status: int, param: str | None = None) -> str:
    """The message of an OpenAI-shaped error with this status (and param)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    return error["message"]


BAD_REQUESTS = {  # name: (files, data, headers, status, param, words of the message)
    "empty": ({"file": ("empty.wav", b"")}, {}, {}, 400, "file", "empty"),
    "text named .wav": ({"file": ("notes.wav", b"just some text, not audio\n" * 20)}, {}, {}, 400,
                        "file", "notes.wav: cannot decode"),
    "truncated wav": ("truncated", {}, {}, 400, "file", "truncated"),
    "oversize": ({"file": ("big.wav", b"\0" * (UPLOAD_MB + 1) * 2**20)}, {}, {}, 413, "file", "too large"),
    "missing file": ({"model": (None, "tiny")}, None, {}, 400, "file", "'file'"),
    "missing model": ("good", None, {}, 400, "model", "'model'"),
    "not multipart": (None, {"model": "tiny"}, {}, 400, None, "multipart/form-data"),
    "wrong key": ("good", {}, {"Authorization": "Bearer nope"}, 401, None, "incorrect API key"),
    "missing key": ("good", {}, {"Authorization": ""}, 401, None, "missing API key"),
    "bad format": ("good", {"response_format": "docx"}, {}, 400, "response_format", "docx"),
    "bad language": ("good", {"language": "klingon"}, {}, 400, "language", "klingon"),
    "bad temperature": ("good", {"temperature": "3"}, {}, 400, "temperature", "0 to 1"),
    "bad granularity": ("good", {"timestamp_granularities[]": "char"}, {}, 400,
                        "timestamp_granularities[]", "char"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_gets_openai_error_and_server_keeps_serving(served, case):
    url, client, _, clips = served
    files, data, headers, status, param, words = BAD_REQUESTS[case]
    good = clips[0].read_bytes()
    if files == "good":
        files = {"file": ("clip.wav", good)}
    elif files == "truncated":
        files = {"file": ("cut.wav", good[: len(good) // 3])}
    if data is not None and files is not None:
        data = {"model": "tiny", **data}
    headers = {"Authorization": f"Bearer {API_KEY}", **headers}
    if not headers["Authorization"]:
        del headers["Authorization"]
    response = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data=data, headers=headers,
                          timeout=60)
    assert words in _error(response, status, param)
    assert _transcribe(client, clips[0], language="de").text == "eins zwei drei"


def test_word_timestamps_of_a_translation_are_refused(served):
    _, client, _, clips = served
    with pytest.raises(openai.BadRequestError) as err:
        _translate(client, clips[0], response_format="verbose_json", timestamp_granularities=["word"])
    assert err.value.status_code == 400 and "transcriptions" in err.value.body["message"]
    assert _translate(client, clips[0]).text == "EINS ZWEI DREI"


def test_wrong_key_through_the_openai_client(served):
    url, _, _, clips = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        _transcribe(client, clips[0])
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"


def test_unknown_route_is_an_openai_error(served):
    url = served[0]
    _error(httpx.get(f"{url}/v1/nothing", headers={"Authorization": f"Bearer {API_KEY}"}), 404)
    _error(httpx.get(f"{url}/v1/audio/transcriptions",
                     headers={"Authorization": f"Bearer {API_KEY}"}), 405)


def test_no_key_needed_without_api_key(tmp_path_factory):
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("open"), 1)
    with live_server(create_app(load(run), "tiny")) as url:
        with open(clips[0], "rb") as f:
            response = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": f},
                                  data={"model": "whisper-1", "language": "de"})
    assert response.status_code == 200 and response.json() == {"text": "eins zwei drei"}


def test_the_serve_command_end_to_end(tmp_path_factory):
    """The real ``speechllama serve`` command in a subprocess: it binds 127.0.0.1 on the given
    port, answers the openai client, and exits 0 on SIGTERM."""
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("cli"), 1)
    with free_socket() as sock:
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "speechllama", "serve", "--model", str(run),
                             "--port", str(port), "--api-key", API_KEY, "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:  # until it is up (or has died): a start-up wait, not a timed assertion
            assert proc.poll() is None, proc.stderr.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        text = _transcribe(client, clips[0], language="de", response_format="text")
        assert text.strip() == "eins zwei drei"
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
