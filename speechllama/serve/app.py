"""The HTTP surface: OpenAI's speech-to-text API over one loaded model, a health check and a web page.

``create_app(model)`` wires it: requests are parsed (form.py, params.py), their audio checked against
``max_audio_s`` from its header and decoded from memory (``speechllama.audio.load_audio_bytes``),
cut into segments (segments.py), queued for the decoding thread (batcher.py), and the
``Transcript`` rendered in the requested format (``speechllama.subtitles.render``, as the CLI
does). A request whose client goes away is dropped with its waiting work. Every error is
OpenAI-shaped (errors.py). docs/serving.md.
"""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import asynccontextmanager
from pathlib import Path

import soundfile as sf
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..audio import SAMPLE_RATE, AudioError, load_audio_bytes
from ..inference.api import Job, SpeechToText
from ..inference.subtitles import MEDIA_TYPES, render
from ..models.prompt import LANGUAGES
from .batcher import Batcher, QueueFull
from .errors import APIError, ClientGone, install_handlers
from .form import read_form
from .params import Params, parse_params
from .segments import plan

STATIC = Path(__file__).parent / "static"


def declared_seconds(data: bytes) -> float | None:
    """The play time an upload's header declares (frames / sample rate), read without decoding the
    samples; None where it does not tell (not audio: load_audio_bytes names the problem)."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - whatever libsndfile makes of it, the decode says it better
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


def _too_long(name: str, seconds: float, max_audio_s: float) -> APIError:
    return APIError(413, f"{name}: {seconds:.1f} s of audio; the limit is {max_audio_s:g} s "
                         "(speechllama serve --max-audio-s)", "file", "audio_too_long")


def load_upload(data: bytes, name: str, max_audio_s: float | None):
    """An upload's 16 kHz wave: 413 when its header declares more than ``max_audio_s`` seconds (before
    a sample is decoded), 400 when it is not usable audio (worker thread)."""
    declared = declared_seconds(data)
    if max_audio_s is not None and declared is not None and declared > max_audio_s:
        raise _too_long(name, declared, max_audio_s)
    try:
        wave = load_audio_bytes(data, name)
    except AudioError as e:
        raise APIError(400, f"unusable audio: {e}", "file", "invalid_audio") from e
    if max_audio_s is not None and len(wave) > max_audio_s * SAMPLE_RATE + 1:  # a header that did not say
        raise _too_long(name, len(wave) / SAMPLE_RATE, max_audio_s)
    return wave


def _job(params: Params, wave, name: str) -> Job:
    """As ``SpeechToText.transcribe``/``translate`` make it: the text in the source language for
    "asr", in English for "st" (OpenAI's translations endpoint); words aligned only when asked for."""
    words = params.task == "asr" and "word" in params.granularities
    return Job(wave, params.task, params.language, word_timestamps=words, name=name)


def _respond(transcript, params: Params) -> Response:
    words = "word" in params.granularities
    return Response(render(transcript, params.response_format, words),
                    media_type=MEDIA_TYPES[params.response_format])


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (the body has been read: ``receive`` then
    waits for the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, work):
    """``await work``, unless the client goes away first: then ``work`` is cancelled (the batcher
    drops its waiting jobs) and ClientGone raised."""
    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, gone):
            t.cancel()
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        raise ClientGone("before its answer was ready; its waiting work was dropped")
    return task.result()


def _api_router(model, batcher: Batcher, model_id: str, max_bytes: int, max_audio_s: float | None,
                read_timeout_s: float | None) -> APIRouter:
    router = APIRouter(prefix="/v1")
    created = int(time.time())

    async def answer(params: Params) -> Response:
        name = params.upload.filename or "file"
        wave = await run_in_threadpool(load_upload, params.upload.data, name, max_audio_s)
        job = _job(params, wave, name)
        cut = await run_in_threadpool(plan, model, job)
        return _respond(cut.stitch(await batcher.submit(cut.jobs)), params)

    async def speech_to_text(request: Request, task: str):
        params = parse_params(await read_form(request, max_bytes, read_timeout_s), task)
        try:
            with batcher.admission():
                return await _unless_gone(request, answer(params))
        except QueueFull as e:
            raise APIError(503, f"{e}; retry in {e.retry_after} s", None, "server_busy",
                           {"Retry-After": str(e.retry_after)}) from None

    @router.post("/audio/transcriptions")
    async def transcriptions(request: Request):
        return await speech_to_text(request, "asr")

    @router.post("/audio/translations")
    async def translations(request: Request):
        return await speech_to_text(request, "st")

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "speechllama"}]}

    return router


def create_app(model: SpeechToText, model_id: str = "speechllama", api_key: str | None = None,
               max_batch: int = 16, max_wait_ms: float = 20.0, max_upload_mb: float = 25.0,
               max_audio_s: float | None = 1800.0, max_queue: int | None = 64,
               read_timeout_s: float | None = 120.0) -> FastAPI:
    """The server's ASGI app over a loaded model (``speechllama.load(DIR)``).

    model_id: the name /v1/models lists (requests may name any model: there is one).
    api_key: when set, /v1/*, /openapi.json and /docs need ``Authorization: Bearer <api_key>``;
    / and /health stay open.
    max_batch, max_wait_ms: dynamic batching of segments (batcher.py). max_upload_mb: request size
    cap (413). max_audio_s: longest play time, from the upload's header before decoding (413).
    max_queue: most requests in the server at once (past that 503 with Retry-After).
    read_timeout_s: the longest a request body may take to arrive (408). None: no limit.
    """
    batcher = Batcher(model.run, max_batch, max_wait_ms, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="speechllama", lifespan=lifespan, redoc_url=None)
    install_handlers(app, api_key)
    app.include_router(_api_router(model, batcher, model_id, int(max_upload_mb * 2**20), max_audio_s,
                                   read_timeout_s))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.batcher = batcher

    @app.get("/health")
    async def health():
        """``queued``: requests in the server (their audio decoding, waiting or decoding);
        ``waiting_jobs``: jobs (segments) waiting for a batch; ``decoding_jobs``: in the model now."""
        return {"status": "ok", "model": model_id, "auth": api_key is not None, "languages": LANGUAGES,
                **batcher.health()}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    return app
