"""The server's parts without a server: the batcher with a fake model, uploads decoded from memory,
the form fields."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import SR, clip

from speechllama.audio import AudioError, load_audio, load_audio_bytes
from speechllama.serve.batcher import Batcher
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
            return await asyncio.gather(*(batcher.submit(j) for j in jobs), return_exceptions=True)
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


def test_an_unexpected_model_error_is_an_openai_shaped_500(tmp_path):
    import httpx
    from serve_helpers import live_server

    from speechllama.serve import create_app

    sf.write(tmp_path / "c.wav", clip(0), SR)
    with live_server(create_app(BrokenModel())) as url:
        with open(tmp_path / "c.wav", "rb") as f:
            response = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": f},
                                  data={"model": "m"})
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "the model fell over" in error["message"]
