"""The server's parts without a server: the batcher with a fake model (batches, round-robin across
requests, dropped work, the bounded queue), uploads decoded from memory, the declared-length check,
the form fields; and the 500 with its error id."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import SR, clip

from speechllama.audio import AudioError, load_audio, load_audio_bytes
from speechllama.serve.app import load_upload
from speechllama.serve.batcher import Batcher, QueueFull
from speechllama.serve.errors import APIError
from speechllama.serve.form import Form, Upload
from speechllama.serve.params import language_code, parse_params


class FakeModel:
    """run(jobs) -> job * 10, recording each call's jobs; a job "bad" fails its whole batch."""

    def __init__(self):
        self.calls = []

    def run(self, jobs):
        self.calls.append(list(jobs))
        if "bad" in jobs:
            raise ValueError("bad job")
        return [job * 10 for job in jobs]


def _submit_all(jobs, max_batch, max_wait_ms=0.0):
    """Submit every job at once (before the batcher's first turn); -> (results, model)."""
    model = FakeModel()

    async def main():
        batcher = Batcher(model.run, max_batch, max_wait_ms)
        await batcher.start()
        try:
            out = await asyncio.gather(*(batcher.submit([j]) for j in jobs), return_exceptions=True)
            return [r if isinstance(r, BaseException) else r[0] for r in out]
        finally:
            await batcher.stop()

    return asyncio.run(main()), model


def test_waiting_jobs_are_decoded_together_up_to_max_batch():
    results, model = _submit_all(list(range(5)), max_batch=2)
    assert results == [0, 10, 20, 30, 40]
    assert model.calls == [[0, 1], [2, 3], [4]]
    results, model = _submit_all(list(range(5)), max_batch=16)  # all waiting: no need to wait more
    assert results == [0, 10, 20, 30, 40] and model.calls == [[0, 1, 2, 3, 4]]
    _, model = _submit_all(list(range(5)), max_batch=5, max_wait_ms=600_000)  # full: no waiting
    assert model.calls == [[0, 1, 2, 3, 4]]


def test_a_failing_job_fails_only_its_own_request():
    results, model = _submit_all([1, "bad", 3], max_batch=8)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError) and "bad job" in str(results[1])
    assert model.calls == [[1, "bad", 3], [1], ["bad"], [3]]  # the batch, then one by one


def test_batcher_options_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(FakeModel().run, 0)
    with pytest.raises(ValueError, match="max_queue"):
        Batcher(FakeModel().run, 4, max_queue=0)


class GatedModel(FakeModel):
    """FakeModel whose calls wait for the test to let them go (one ``release()`` per call)."""

    def __init__(self):
        super().__init__()
        import threading

        self.gate = threading.Semaphore(0)

    def run(self, jobs):
        self.gate.acquire()
        return super().run(jobs)


async def _until(condition, what: str):
    for _ in range(5000):  # a bound on a hang, not a timing
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


def test_a_short_request_is_not_stuck_behind_a_long_one():
    """A long request (10 jobs) is decoding; a short one (1 job) that arrives then is in the very
    next batch, of its own (the short lane); long requests share batches round-robin, one job per
    request per turn; the lanes alternate while both wait."""
    model = GatedModel()

    async def main():
        batcher = Batcher(model.run, max_batch=3, max_wait_ms=0)
        await batcher.start()
        try:
            long = asyncio.ensure_future(batcher.submit(list(range(100, 110))))
            await _until(lambda: len(model.calls) == 0 and batcher.in_model == 3, "the first batch")
            other = asyncio.ensure_future(batcher.submit([8, 9]))
            shorts = [asyncio.ensure_future(batcher.submit([j])) for j in range(1, 6)]
            await _until(lambda: batcher.waiting_jobs == 7 + 2 + 5, "every job waiting")
            for _ in range(20):
                model.gate.release()
            return await long, await other, [(await s)[0] for s in shorts]
        finally:
            await batcher.stop()

    long, other, shorts = asyncio.run(main())
    assert long == [j * 10 for j in range(100, 110)] and other == [80, 90] and shorts == [10, 20, 30, 40, 50]
    assert model.calls == [[100, 101, 102], [1, 2, 3], [103, 8, 104], [4, 5], [105, 9, 106],
                           [107, 108, 109]]


def test_a_cancelled_request_drops_its_waiting_jobs():
    model = GatedModel()

    async def main():
        batcher = Batcher(model.run, max_batch=2, max_wait_ms=0)
        await batcher.start()
        try:
            gone = asyncio.ensure_future(batcher.submit(list(range(10))))
            await _until(lambda: batcher.in_model == 2, "the first batch")
            gone.cancel()  # what the server does when its client goes away
            await asyncio.gather(gone, return_exceptions=True)
            assert batcher.waiting_jobs == 0
            kept = asyncio.ensure_future(batcher.submit([5]))
            model.gate.release()
            model.gate.release()
            return await kept, batcher.health()
        finally:
            await batcher.stop()

    kept, health = asyncio.run(main())
    assert kept == [50] and model.calls == [[0, 1], [5]]  # the batch in the model ends; no more of it
    assert health["cancelled_requests"] == 1 and health["dropped_jobs"] == 8
    assert health["waiting_jobs"] == health["decoding_jobs"] == 0


def test_the_queue_is_bounded():
    batcher = Batcher(FakeModel().run, 4, max_queue=2)
    with batcher.admission(), batcher.admission():
        with pytest.raises(QueueFull) as err:
            with batcher.admission():
                pass
        assert err.value.retry_after >= 1 and batcher.admitted == 2
    assert batcher.admitted == 0
    with batcher.admission():  # room again
        assert batcher.admitted == 1


def test_declared_length_is_refused_before_decoding(tmp_path, monkeypatch):
    """A 720 kB WAV that declares 100 Hz is an hour of audio: 413 from its header, no sample decoded."""
    import speechllama.serve.app as app_module

    decoded = []
    monkeypatch.setattr(app_module, "load_audio_bytes", lambda *a: decoded.append(a))
    sf.write(tmp_path / "hour.wav", (0.1 * np.ones(360_000)).astype(np.float32), 100, subtype="PCM_16")
    data = (tmp_path / "hour.wav").read_bytes()
    assert len(data) < 800_000 and app_module.declared_seconds(data) == 3600
    with pytest.raises(APIError) as err:
        load_upload(data, "hour.wav", max_audio_s=1800)
    assert err.value.status == 413 and err.value.code == "audio_too_long" and "3600.0 s" in err.value.message
    assert decoded == []
    assert app_module.declared_seconds(b"not audio at all") is None


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_upload_bytes_decode_as_the_file_does(tmp_path, fmt):
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, clip(0), SR, format=fmt)
    assert np.array_equal(load_audio_bytes(path.read_bytes(), "clip"), load_audio(path))


def test_bad_upload_bytes_are_named_audio_errors(tmp_path):
    sf.write(tmp_path / "c.wav", clip(0), SR)
    data = (tmp_path / "c.wav").read_bytes()
    for payload, words in [(b"", "empty"), (b"plain text\n" * 50, "cannot decode"),
                           (data[: len(data) // 2], "truncated"), (data[:44], "")]:
        with pytest.raises(AudioError, match=f"^upload.wav: .*{words}"):
            load_audio_bytes(payload, "upload.wav")


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    """A client that sends part of its body and stalls: 408 after the read timeout, and the
    connection is closed (Connection: close)."""
    from starlette.requests import Request

    from speechllama.serve.form import read_form

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"--b\r\nContent-Disposition: form-data",
                    "more_body": True}
        await asyncio.sleep(3600)  # stalled

    sent = []
    scope = {"type": "http", "method": "POST", "path": "/v1/audio/transcriptions", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    with pytest.raises(APIError) as err:
        asyncio.run(read_form(Request(scope, receive), 2**20, timeout_s=0.05))
    assert err.value.status == 408 and err.value.headers == {"Connection": "close"} and sent


def _form(**fields) -> Form:
    form = Form(files={"file": [Upload("a.wav", "audio/wav", b"RIFF")]})
    for name, value in fields.items():
        form.fields[name.replace("__", "[]")] = value if isinstance(value, list) else [value]
    return form


def test_form_fields_are_checked():
    params = parse_params(_form(model="m", language="German", temperature="0.2",
                                timestamp_granularities__=["word", "segment"]), "asr")
    assert params.language == "de" and params.temperature == 0.2
    assert params.granularities == ("segment", "word") and params.response_format == "json"
    assert language_code("FR") == "fr"
    for fields, param in [({}, "model"), ({"model": "m", "response_format": "xml"}, "response_format"),
                          ({"model": "m", "temperature": "hot"}, "temperature"),
                          ({"model": "m", "language": "xx"}, "language"),
                          ({"model": "m", "stream": "true"}, "stream")]:
        with pytest.raises(APIError) as err:
            parse_params(_form(**fields), "asr")
        assert err.value.status == 400 and err.value.param == param


class BrokenModel:
    def run(self, jobs):
        raise RuntimeError("the model fell over")


def test_an_unexpected_model_error_is_an_openai_shaped_500_with_an_error_id(tmp_path, caplog):
    """The client gets an error id, never the exception's text; the server logs the traceback once
    under that id."""
    import httpx
    from serve_helpers import live_server

    from speechllama.serve import create_app

    sf.write(tmp_path / "c.wav", clip(0), SR)
    with caplog.at_level(logging.INFO, "speechllama.serve"), live_server(create_app(BrokenModel())) as url:
        with open(tmp_path / "c.wav", "rb") as f:
            response = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": f},
                                  data={"model": "m"})
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "fell over" not in response.text and "RuntimeError" not in response.text
    error_id = error["message"].split("error id ")[1].split(":")[0]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and error_id in logged[0].getMessage()
    assert logged[0].exc_info and "the model fell over" in str(logged[0].exc_info[1])
