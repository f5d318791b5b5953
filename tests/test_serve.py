"""The server through the official ``openai`` client against a real uvicorn server on 127.0.0.1:
every response format of both endpoints, long audio, served == offline under concurrency (float32
weights, as served, on near-tie inputs), OpenAI-shaped errors for bad requests after which the server
keeps serving, and the scheduling: a short request is not stuck behind a long file, a file over
--max-audio-s is refused before decoding, a client that goes away leaves no work behind, a full queue
answers 503 with Retry-After."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from serve_helpers import (
    API_KEY,
    MAX_SECONDS,
    SR,
    crops,
    free_socket,
    live_server,
    long_wave,
    multipart,
    raw_post,
    trained_model,
    wait_for,
    wav_bytes,
    write_clips,
)

from speechllama.audio import load_audio_bytes
from speechllama.serve import create_app, load_for_serving

UPLOAD_MB = 8  # the test server's upload cap: the long file (~4 MB) fits, the oversize one does not
SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.+)\n\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n(.+)\n\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, openai client, offline model, test clips): the server decodes with its own copy
    of the model, loaded as ``speechllama serve`` loads it (float32 weights, its default); the
    offline model is loaded the same way."""
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("clips"), 8)
    app = create_app(load_for_serving(run), "tiny", api_key=API_KEY, max_upload_mb=UPLOAD_MB)
    with live_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        yield url, client, load_for_serving(run), clips


def _transcribe(client, path, **kw):
    """``path``: a file, or (name, bytes)."""
    if isinstance(path, tuple):
        return client.audio.transcriptions.create(file=path, model="tiny", **kw)
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(file=f, model="tiny", **kw)


def _translate(client, path, language=None, **kw):
    """OpenAI's translations form has no ``language``; the server takes it as the source language."""
    if language:
        kw["extra_body"] = {"language": language}
    if "timestamp_granularities" in kw:  # not in OpenAI's translations form either
        kw.setdefault("extra_body", {})["timestamp_granularities"] = kw.pop("timestamp_granularities")
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client marks the endpoint legacy
        f = path if isinstance(path, tuple) else stack.enter_context(open(path, "rb"))
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
    speechllama.inference.segment's; this tiny compressor labels pauses as words, so here they are hard cuts.)"""
    _, client, offline, _ = served
    wave, _ = long_wave(130.0)
    path = tmp_path / "long.wav"
    sf.write(path, wave, SR)
    out = _transcribe(client, path, language="de", response_format="verbose_json",
                      timestamp_granularities=["word", "segment"])
    segs = out.segments
    assert out.duration == pytest.approx(len(wave) / SR, abs=1e-3) and out.duration > 120
    assert segs[0].start == 0 and segs[-1].end == pytest.approx(out.duration, abs=1e-3)
    assert all(a.end == b.start for a, b in zip(segs, segs[1:]))  # in order, no overlap, no gap
    assert [s.id for s in segs] == list(range(len(segs)))
    assert len(segs) >= 130 / MAX_SECONDS and all(0 < s.end - s.start <= MAX_SECONDS for s in segs)
    assert out.text == " ".join(s.text for s in segs if s.text)
    expected = offline.transcribe(str(path), src_lang="de", return_segments=True)
    assert [(s.start, s.end, s.text) for s in segs] == [(s.start, s.end, s.text) for s in expected.segments]
    assert out.text == expected.text and expected.words  # served cut into segment jobs, stitched back:
    assert [(w.word, w.start, w.end) for w in out.words] == [(w.word, w.start, w.end) for w in expected.words]
    srt = _transcribe(client, path, language="de", response_format="srt")
    assert len(SRT_CUE.findall(srt)) == sum(1 for s in segs if s.text)


def test_a_long_file_with_silent_segments(served, tmp_path, monkeypatch):
    """Segments the compressor hears as silence are not decoded ("" text, no words), served as
    offline (this tiny compressor hears none, so every third segment is made silent, for both)."""
    import speechllama.inference.api
    from speechllama.inference.segment import Span, segment_wave

    def with_silence(*args, **kwargs):
        spans = segment_wave(*args, **kwargs)
        return spans if len(spans) == 1 else [Span(s.start, s.end, s.silent or k % 3 == 1)
                                              for k, s in enumerate(spans)]

    monkeypatch.setattr(speechllama.inference.api, "segment_wave", with_silence)  # the server's cuts too
    _, client, offline, _ = served
    wave, _ = long_wave(30.0, seed=2)
    sf.write(tmp_path / "long.wav", wave, SR)
    out = _transcribe(client, tmp_path / "long.wav", language="de", response_format="verbose_json",
                      timestamp_granularities=["word", "segment"])
    expected = offline.transcribe(str(tmp_path / "long.wav"), src_lang="de", return_segments=True)
    assert len(out.segments) > 3 and [s.text for s in out.segments[1::3]] == [""] * len(out.segments[1::3])
    assert [(s.start, s.end, s.text) for s in out.segments] == \
        [(s.start, s.end, s.text) for s in expected.segments]
    assert out.text == expected.text and expected.words
    assert [(w.word, w.start, w.end) for w in out.words] == [(w.word, w.start, w.end) for w in expected.words]


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


def test_served_equals_offline_under_concurrency_and_batches_form(served):
    """48 concurrent requests (the test clips and pieces cut through them: near-ties that bf16
    weights decode differently in batches of other shapes) equal the same files decoded offline one
    at a time, with the server's float32 weights; and they were batched (/health: more than one job
    a model call)."""
    url, client, offline, clips = served
    cases = [(task, clips[k].read_bytes(), lang) for k in range(len(clips)) for task in ("asr", "st")
             for lang in ("de", None)]
    cases += [("asr" if k % 3 else "st", wav_bytes(w), "de") for k, w in enumerate(crops(16))]
    assert len(cases) == 48
    expected = [(offline.transcribe if task == "asr" else offline.translate)(
        load_audio_bytes(data), src_lang=lang) for task, data, lang in cases]
    before = httpx.get(f"{url}/health").json()

    def one(case):
        task, data, lang = case
        call = _transcribe if task == "asr" else _translate
        return call(client, ("a.wav", data), **({"language": lang} if lang else {})).text

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(one, cases))
    assert got == expected
    after = httpx.get(f"{url}/health").json()
    batches, jobs = after["batches"] - before["batches"], after["jobs"] - before["jobs"]
    print(f"{len(cases)} requests in {batches} batches")
    assert jobs == len(cases) and batches < jobs  # some batch held more than one request


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


def test_the_key_guards_every_v1_route_and_the_schema(served):
    """Without the key: 401 before 404 on an unknown /v1 route; /openapi.json and /docs too."""
    url = served[0]
    for path in ("/v1/nothing", "/v1", "/v1/models", "/openapi.json", "/docs"):
        assert "missing API key" in _error(httpx.get(f"{url}{path}"), 401), path
        _error(httpx.get(f"{url}{path}", headers={"Authorization": "Bearer nope"}), 401)
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert "/v1/audio/transcriptions" in httpx.get(f"{url}/openapi.json", headers=key).json()["paths"]
    assert httpx.get(f"{url}/docs", headers=key).status_code == 200
    assert httpx.get(f"{url}/health").status_code == httpx.get(f"{url}/").status_code == 200


def test_no_key_needed_without_api_key(tmp_path_factory):
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("open"), 1)
    with live_server(create_app(load_for_serving(run), "tiny")) as url:
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


# --- scheduling: a server of its own, whose queue the tests fill -----------------------------------

LONG_S = 300.0  # the long file: 5 minutes of clips and pauses, ~100 segments
MAX_AUDIO_S = 600.0


@pytest.fixture(scope="module")
def sched(tmp_path_factory):
    """(base URL, app, the long file's WAV bytes, a short clip's): --max-batch 4 (a long file is
    many batches), --max-queue 2, --max-audio-s 600."""
    run = trained_model(tmp_path_factory)
    app = create_app(load_for_serving(run), "tiny", max_batch=4, max_upload_mb=32, max_queue=2,
                     max_audio_s=MAX_AUDIO_S)
    long, _ = long_wave(LONG_S, seed=1)
    short = write_clips(tmp_path_factory.mktemp("sched"), 1)[0].read_bytes()
    with live_server(app) as url:
        yield url, app, wav_bytes(long), short


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health").json()


def _idle(url: str) -> dict:
    """/health once no request is left in the server (none queued, waiting or decoding)."""
    return wait_for(lambda: (h := _health(url))["queued"] == h["waiting_jobs"] == h["decoding_jobs"] == 0
                    and h, "an idle server")


def _post(url: str, data: bytes, timeout: float = 300) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                      data={"model": "tiny", "language": "de"}, timeout=timeout)


def test_a_short_request_is_not_stuck_behind_a_long_file(sched):
    """While a 5-minute file decodes, a short request sent after it started decoding finishes first
    (the property: with one model call per file it waited for the whole file); its latency beside
    the long file and alone are printed."""
    url, _, long, short = sched
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

    def timed(data):
        start = time.perf_counter()
        text = _transcribe(client, ("a.wav", data), language="de").text
        return text, time.perf_counter() - start

    idle = sorted(timed(short)[1] for _ in range(3))[1]
    before = _idle(url)
    with ThreadPoolExecutor(1) as pool:
        long_done = pool.submit(timed, long)
        wait_for(lambda: _health(url)["jobs"] > before["jobs"] and _health(url)["waiting_jobs"] > 0,
                 "the long file decoding, with segments still waiting")
        text, busy = timed(short)
        assert not long_done.done()  # the short one finished first
        long_text, long_s = long_done.result()
    assert text == "eins zwei drei" and long_text
    print(f"short request: {1000 * idle:.0f} ms idle, {1000 * busy:.0f} ms beside the long file "
          f"({busy / idle:.1f}x); the long file {long_s:.1f} s")


def test_a_file_longer_than_max_audio_s_is_refused_before_decoding(sched, monkeypatch):
    """A 720 kB WAV declared at 100 Hz is an hour of audio: 413 from its header, no sample decoded,
    nothing queued; a file under the limit still decodes."""
    import speechllama.serve.app as app_module

    url, _, _, short = sched
    decoded = []
    real = app_module.load_audio_bytes
    monkeypatch.setattr(app_module, "load_audio_bytes", lambda *a: decoded.append(a) or real(*a))
    hour = wav_bytes((0.1 * np.sin(np.arange(360_000))).astype(np.float32), sr=100)
    before = _idle(url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        _transcribe(client, ("hour.wav", hour))
    assert err.value.status_code == 413 and err.value.code == "audio_too_long"
    assert "3600.0 s" in err.value.message and "600 s" in err.value.message and decoded == []
    assert _health(url)["jobs"] == before["jobs"]
    assert _transcribe(client, ("a.wav", short), language="de").text == "eins zwei drei" and decoded


def test_a_client_that_goes_away_leaves_no_work_behind(sched, caplog):
    """The client of the long file closes its connection while the file decodes: its waiting
    segments are dropped (/health: nothing queued, waiting or decoding; fewer jobs decoded than the
    file has segments) and that is one log line, no traceback."""
    url, _, long, _ = sched
    before = _idle(url)
    body, content_type = multipart(long, model="tiny", language="de")
    with caplog.at_level(logging.INFO, "speechllama.serve"):
        sock = raw_post(url, "/v1/audio/transcriptions", body, content_type)
        wait_for(lambda: _health(url)["jobs"] > before["jobs"] and _health(url)["waiting_jobs"] > 0,
                 "the long file decoding")
        sock.close()
        after = _idle(url)
    decoded = after["jobs"] - before["jobs"]
    assert after["cancelled_requests"] == before["cancelled_requests"] + 1
    assert after["dropped_jobs"] > before["dropped_jobs"] and decoded < LONG_S / MAX_SECONDS
    gone = [r for r in caplog.records if "client went away" in r.getMessage()]
    assert len(gone) == 1 and not any(r.exc_info for r in caplog.records)


def test_a_client_that_goes_away_mid_upload_is_one_log_line(sched, caplog):
    url, _, long, _ = sched
    body, content_type = multipart(long, model="tiny")
    errors = logging.getLogger("uvicorn.error")  # uvicorn's own (not propagated to the root logger)
    errors.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, "speechllama.serve"):
            sock = raw_post(url, "/v1/audio/transcriptions", body, content_type, send=len(body) // 3)
            time.sleep(0.2)  # let the server read some of it (not a timed assertion)
            sock.close()
            wait_for(lambda: any("client went away" in r.getMessage() for r in caplog.records),
                     "the log line")
            _idle(url)
    finally:
        errors.removeHandler(caplog.handler)
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "mid-upload" in caplog.records[0].getMessage() and not caplog.records[0].exc_info


def test_a_full_queue_answers_503_with_retry_after(sched):
    """--max-queue 2: with two long files in the server a third request gets 503 and Retry-After
    (the openai client raises InternalServerError); once they are gone it is served."""
    url, _, long, short = sched
    before = _idle(url)
    body, content_type = multipart(long, model="tiny", language="de")
    socks = [raw_post(url, "/v1/audio/transcriptions", body, content_type) for _ in range(2)]
    try:
        wait_for(lambda: _health(url)["queued"] == 2, "two requests in the server")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            _transcribe(client, ("a.wav", short), language="de")
        assert err.value.status_code == 503 and err.value.code == "server_busy"
        assert int(err.value.response.headers["retry-after"]) >= 1
    finally:
        for sock in socks:
            sock.close()
    after = _idle(url)  # both dropped: far fewer jobs decoded than their segments
    assert after["jobs"] - before["jobs"] < LONG_S / MAX_SECONDS
    assert _post(url, short).json() == {"text": "eins zwei drei"}
