"""A bounded load test: 200 requests from 32 concurrent clients against a real uvicorn server;
0 errors, every result equal to offline decoding, and no memory kept per request: the Python and
numpy allocations still alive after the 200 requests (tracemalloc: uploads, waves, forms, results,
whatever a leak would hold) are bounded well below what keeping one upload a request would leave
(200 x 35 kB = 7 MB); the process's RSS growth is printed, and bounded loosely (it also sees the
allocator's pools; torch's tensors are not traced). bench/bench_serve.py runs the same against the
real ``speechllama serve`` command."""

from __future__ import annotations

import gc
import random
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
from serve_helpers import live_server, trained_model, write_clips

from speechllama.serve import create_app, load_for_serving

REQUESTS, CLIENTS = 200, 32
KEPT_BOUND_MB = 3.0  # Python + numpy memory still held after the 200 requests (~1 MB); one upload each: ~7 MB
RSS_BOUND_MB = 150  # growth of the whole process after a warm-up: gross leaks only (see above)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks translations legacy
def test_200_requests_from_32_clients(tmp_path_factory):
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("load"), 8)
    offline = load_for_serving(run)
    expected = {(k, task): (offline.transcribe if task == "asr" else offline.translate)(str(clips[k]), "de")
                for k in range(len(clips)) for task in ("asr", "st")}
    rng = random.Random(0)
    cases = [(rng.randrange(len(clips)), rng.choice(["asr", "st"])) for _ in range(REQUESTS)]
    uploads = [p.read_bytes() for p in clips]
    process = psutil.Process()
    with live_server(create_app(load_for_serving(run), "tiny", max_batch=16)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

        def one(case):
            k, task = case
            endpoint = client.audio.transcriptions if task == "asr" else client.audio.translations
            kwargs = {"language": "de"} if task == "asr" else {"extra_body": {"language": "de"}}
            return endpoint.create(file=(f"clip{k}.wav", uploads[k]), model="tiny", **kwargs).text

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, cases[:CLIENTS]))  # warm-up: allocator pools, thread stacks, caches
            gc.collect()
            rss_before = process.memory_info().rss
            tracemalloc.start()
            try:
                got = list(pool.map(one, cases))
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] / 2**20  # allocated since start, still alive
            finally:
                tracemalloc.stop()
        rss_after = process.memory_info().rss
        stats = httpx.get(f"{url}/health").json()
    assert got == [expected[case] for case in cases]  # and 0 errors: any would have raised
    growth = (rss_after - rss_before) / 2**20
    print(f"{REQUESTS} requests, {CLIENTS} clients: {kept:.2f} MB of allocations kept; RSS "
          f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB (+{growth:.1f} MB); {stats['batches']} "
          f"batches, mean {stats['mean_batch']}, largest {stats['largest_batch']}")
    assert kept < KEPT_BOUND_MB and growth < RSS_BOUND_MB
    assert stats["queued"] == stats["waiting_jobs"] == 0
    assert stats["largest_batch"] > 1  # the concurrent requests were batched, and still equal offline
