"""Fail fast: the server is checked before the first seed, and a server that goes away stops the run
(circuit breaker) with what was written kept, instead of every seed spending its retries on it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from arctic_pretrain.generation.openai import ServerUnavailable
from arctic_pretrain.synthesize import run
from tests.synthesize.conftest import ROOT
from tests.synthesize.helpers import make_config, records
from tests.synthesize.openai_server import OpenAIServer

PY = ["seeding.languages=[python]", "seeding.num_seeds=30", "progress=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_exits_nonzero_naming_the_url(seeds, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    proc = subprocess.run([sys.executable, "launch/synthesize.py", f"seeds={seeds}", f"output_dir={tmp_path / 'out'}",
                           f"backend.base_url={url}", *PY], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"no server answers at backend.base_url={url}" in proc.stderr
    assert records(tmp_path / "out") == []  # no seed consumed


def test_a_model_the_server_does_not_serve_is_refused_before_any_request(seeds, tmp_path):
    expected = r"backend.model='meta-llama/Llama-3.1-70B-Instruct' is not served at http://127.0.0.1:\d+/v1 \(it serves \['Qwen/"
    with OpenAIServer(models=("Qwen/Qwen2.5-Coder-7B-Instruct",)) as srv, pytest.raises(ServerUnavailable, match=expected):
        run(make_config(f"seeds={seeds}", f"output_dir={tmp_path / 'out'}", f"backend.base_url={srv.url}", *PY))
    assert srv.requests == 0


def test_a_server_that_dies_mid_run_trips_the_breaker_and_keeps_what_was_written(seeds, tmp_path):
    out = tmp_path / "out"
    gen = out / "generations" / "00000.jsonl"
    # retries that would take minutes to run out (100 per seed): only the breaker ends the run quickly
    args = [f"seeds={seeds}", f"output_dir={out}", *PY, "backend.concurrency=2", "backend.max_retries=100",
            "backend.backoff_s=0.05", "backend.backoff_max_s=0.1", "backend.breaker_failures=4",
            "backend.breaker_window_s=0.5"]
    srv = OpenAIServer(delay_s=0.05).__enter__()
    port, written = srv.port, []

    def kill_when_some_are_written():
        deadline = time.time() + 120
        while time.time() < deadline and not (gen.is_file() and gen.read_bytes().count(b"\n") >= 8):
            time.sleep(0.02)
        srv.__exit__(None, None, None)  # the listening socket closes: connections are refused from now on
        written.append(gen.read_bytes().count(b"\n"))

    killer = threading.Thread(target=kill_when_some_are_written)
    killer.start()
    try:
        with pytest.raises(ServerUnavailable, match=rf"the server at http://127.0.0.1:{port}/v1 stopped answering: "
                                                     r"\d+ attempts in a row"):
            run(make_config(f"backend.base_url={srv.url}", *args))
    finally:
        killer.join()
    kept = records(out)  # every line parses
    assert 8 <= written[0] <= len(kept) < 30, "the server must die mid-run"
    assert not (out / "manifest.json").exists()
    with OpenAIServer(port=port) as srv2:  # the server is back: the rerun sends only the seeds not written
        run(make_config(f"backend.base_url={srv2.url}", *args))
    ids = [r["id"] for r in records(out)]
    assert len(ids) == len(set(ids)) == 30
    assert srv2.requests == 30 - len(kept)
    assert json.loads((out / "synthesis.json").read_text())["duplicate_records"] == 0
