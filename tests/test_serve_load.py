"""A bounded load test: 200 requests from 32 concurrent clients against a real uvicorn server;
0 errors, every result equal to offline decoding, and the process's RSS growth printed and
bounded (bench/bench_serve.py runs the same against the real ``speechllama serve`` command)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest
from serve_helpers import live_server, trained_model, write_clips

from speechllama import load
from speechllama.serve import create_app

REQUESTS, CLIENTS = 200, 32
RSS_BOUND_MB = 150  # growth over 200 requests after a warm-up; a leak of one upload a request is ~8 MB


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks translations legacy
def test_200_requests_from_32_clients(tmp_path_factory):
    run = trained_model(tmp_path_factory)
    clips = write_clips(tmp_path_factory.mktemp("load"), 8)
    offline = load(run)
    expected = {(k, task): (offline.transcribe if task == "asr" else offline.translate)(str(clips[k]), "de")
                for k in range(len(clips)) for task in ("asr", "st")}
    rng = random.Random(0)
    cases = [(rng.randrange(len(clips)), rng.choice(["asr", "st"])) for _ in range(REQUESTS)]
    uploads = [p.read_bytes() for p in clips]
    process = psutil.Process()
    with live_server(create_app(load(run), "tiny", max_batch=16)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

        def one(case):
            k, task = case
            endpoint = client.audio.transcriptions if task == "asr" else client.audio.translations
            kwargs = {"language": "de"} if task == "asr" else {"extra_body": {"language": "de"}}
            return endpoint.create(file=(f"clip{k}.wav", uploads[k]), model="tiny", **kwargs).text

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(one, cases[:CLIENTS]))  # warm-up: allocator pools, thread stacks
            rss_before = process.memory_info().rss
            got = list(pool.map(one, cases))
        rss_after = process.memory_info().rss
        stats = httpx.get(f"{url}/health").json()
    assert got == [expected[case] for case in cases]  # and 0 errors: any would have raised
    growth = (rss_after - rss_before) / 2**20
    print(f"{REQUESTS} requests, {CLIENTS} clients: RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MB (+{growth:.1f} MB); {stats['batches']} batches, "
          f"mean {stats['mean_batch']}, largest {stats['largest_batch']}")
    assert growth < RSS_BOUND_MB
