"""The ``openai`` backend: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, OpenAI itself).

Raw-text prompts go to ``/v1/completions``; conversations go to ``/v1/chat/completions`` (the server applies
the model's chat template). Requests run concurrently up to ``options.concurrency``; the official client
retries 408/409/429/5xx and connection errors with exponential backoff (``options.max_retries``) and times
out after ``options.timeout`` seconds. Scores are top-k log-probabilities only (what servers offer), via an
echoed completion request; full-vocabulary reductions raise :class:`~alignkit.errors.CapabilityError`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from alignkit.errors import BackendUnavailableError, CapabilityError, ModelConnectionError, ModelSpecError
from alignkit.models.base import (
    Capabilities,
    PositionReducer,
    configs_for,
    find_stop,
    refuse_constraints,
    stream_safe_length,
)
from alignkit.models.registry import ModelOptions, ResolvedSpec
from alignkit.types import Completion, GenerationConfig, Message, Prompt, StreamEvent, TokenScores
from alignkit.version import __version__

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: top-k logprobs most servers allow (OpenAI: 20 for chat, 5 for completions; vLLM: 20 unless raised with
#: ``--max-logprobs``).
DEFAULT_MAX_LOGPROBS = 20


def parse_target(target: str) -> tuple[str, str]:
    """``NAME@URL`` -> (name, base_url); ``NAME`` uses ``$OPENAI_BASE_URL`` or api.openai.com."""
    name, sep, url = target.rpartition("@") if "@http" in target else (target, "", "")
    if sep:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ModelSpecError(f"bad server URL {url!r} in openai:{target}; expected http(s)://host:port/v1")
    else:
        url = os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL)
    if not name:
        raise ModelSpecError(f"openai spec {target!r} has no model name; expected openai:NAME@http://host:port/v1")
    return name, url.rstrip("/")


def _is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class OpenAIModel:
    """A model behind an OpenAI-compatible HTTP API."""

    backend = "openai"

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        spec: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        context_length: int | None = None,
        max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise BackendUnavailableError("openai", "openai", "openai") from None
        self._openai = openai
        self.name, self.base_url, self.spec = name, base_url, spec
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=max_retries
        )
        self.concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="alignkit-openai")
        self._context_length = context_length
        self.capabilities = Capabilities(
            full_vocab_logits=False,
            topk_logprobs=max_logprobs,
            chat_template=True,
            streaming=True,
            adapters=False,
            prefix_reuse=False,
            token_ids=False,
        )

    @property
    def context_length(self) -> int | None:
        return self._context_length

    def info(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "backend": self.backend,
            "model": self.name,
            "base_url": self.base_url,
            "alignkit": __version__,
            "openai": self._openai.__version__,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        raise CapabilityError(f"the chat template of {self.spec!r} is applied by its server and cannot be shown")

    # ------------------------------------------------------------------ requests
    def _call(self, fn, **kwargs):
        """Run one API call, turning transport failures into one-line errors naming the server."""
        o = self._openai
        try:
            return fn(**kwargs)
        except o.APITimeoutError as e:
            raise ModelConnectionError(f"request to {self.base_url} (model {self.name!r}) timed out: {e}") from e
        except o.APIConnectionError as e:
            raise ModelConnectionError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} (model {self.name!r}): {e}"
            ) from e
        except o.AuthenticationError as e:
            raise ModelConnectionError(f"{self.base_url} refused the API key (401): {_api_message(e)}") from e
        except o.NotFoundError as e:
            raise ModelConnectionError(
                f"{self.base_url} has no model {self.name!r} or no such endpoint (404): {_api_message(e)}"
            ) from e
        except o.APIStatusError as e:
            raise ModelConnectionError(
                f"{self.base_url} answered {e.status_code} for model {self.name!r} (after retries): {_api_message(e)}"
            ) from e

    def _params(self, cfg: GenerationConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.name, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature}
        if cfg.top_p < 1:
            params["top_p"] = cfg.top_p
        if cfg.seed is not None:
            params["seed"] = cfg.seed
        if cfg.stop:
            params["stop"] = list(cfg.stop)
        extra: dict[str, Any] = {}
        if cfg.top_k:
            extra["top_k"] = cfg.top_k  # vLLM, llama.cpp server and Ollama accept these; OpenAI does not
        if cfg.repetition_penalty != 1.0:
            extra["repetition_penalty"] = cfg.repetition_penalty
        if extra:
            params["extra_body"] = extra
        return params

    def _one(self, prompt: Prompt, cfg: GenerationConfig, response_format: dict | None = None,
             top_logprobs: int | None = None) -> Completion:
        params = self._params(cfg)
        if isinstance(prompt, str):
            resp = self._call(self.client.completions.create, prompt=prompt, **params)
            choice = resp.choices[0]
            text = choice.text or ""
        else:
            msgs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]
            extra: dict[str, Any] = {"response_format": response_format} if response_format else {}
            if top_logprobs is not None:
                extra.update(logprobs=True, top_logprobs=top_logprobs)
            resp = self._call(self.client.chat.completions.create, messages=msgs, **params, **extra)
            choice = resp.choices[0]
            text = choice.message.content or ""
        comp = _completion(text, choice.finish_reason, resp.usage, cfg)
        if top_logprobs is not None and not isinstance(prompt, str):
            comp = dataclasses.replace(comp, meta={"logprobs": _chat_logprobs(choice)})
        return comp

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        response_format: dict | None = None,
        top_logprobs: int | None = None,
    ) -> list[Completion]:
        """``response_format`` (e.g. ``{"type": "json_object"}`` or a ``json_schema``) is passed to chat requests
        where the server offers structured output. ``top_logprobs``: ask chat requests for each generated token's
        log-probability and its top alternatives; they come back in ``Completion.meta["logprobs"]`` as
        ``[(token, logprob, ((token, logprob), ...)), ...]`` (None when the server sent none)."""
        configs = configs_for(len(prompts), config)
        refuse_constraints(configs, "openai")
        futures = [self._pool.submit(self._one, p, c, response_format, top_logprobs)
                   for p, c in zip(prompts, configs)]
        return [f.result() for f in futures]

    def _stream_one(self, index: int, prompt: Prompt, cfg: GenerationConfig, out: queue.Queue, should_stop=None) -> None:
        try:
            params = self._params(cfg)
            opts = {"stream": True, "stream_options": {"include_usage": True}}
            if isinstance(prompt, str):
                chunks = self._call(self.client.completions.create, prompt=prompt, **params, **opts)
            else:
                msgs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in prompt]
                chunks = self._call(self.client.chat.completions.create, messages=msgs, **params, **opts)
            text, emitted, finish, usage = "", 0, None, None
            for chunk in chunks:
                if should_stop is not None and should_stop(index):
                    chunks.close()
                    return
                usage = getattr(chunk, "usage", None) or usage
                for ch in chunk.choices:
                    piece = getattr(ch, "text", None)
                    if piece is None and getattr(ch, "delta", None) is not None:
                        piece = ch.delta.content
                    text += piece or ""
                    finish = ch.finish_reason or finish
                hit = find_stop(text, cfg.stop)
                if hit:
                    text, finish = text[: hit[0]], "stop"
                safe = len(text) if hit else stream_safe_length(text, cfg.stop)
                if safe > emitted:
                    out.put(StreamEvent(index, text[emitted:safe]))
                    emitted = safe
                if hit:
                    chunks.close() if hasattr(chunks, "close") else None
                    break
            comp = _completion(text, finish, usage, cfg)
            out.put(StreamEvent(index, text[emitted:], comp.finish_reason, comp))
        except BaseException as e:  # handed to the consuming thread
            out.put(e)

    def stream(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        should_stop=None,
    ) -> Iterator[StreamEvent]:
        configs = configs_for(len(prompts), config)
        refuse_constraints(configs, "openai")
        out: queue.Queue = queue.Queue()
        sem = threading.BoundedSemaphore(self.concurrency)

        def gated(i: int, p: Prompt, c: GenerationConfig, q: queue.Queue) -> None:
            with sem:
                self._stream_one(i, p, c, q, should_stop=should_stop)

        for i, (p, c) in enumerate(zip(prompts, configs)):
            threading.Thread(target=gated, args=(i, p, c, out), daemon=True).start()
        done = 0
        expected = len(prompts)
        while done < expected:
            if should_stop is not None:
                expected = len(prompts) - sum(bool(should_stop(i)) for i in range(len(prompts)))
                if done >= expected:
                    break
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                done += 1
            yield item

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str | Sequence[int]],
        *,
        top_k: int = 0,
        reduce: PositionReducer | None = None,
    ) -> list[TokenScores]:
        if reduce is not None:
            raise CapabilityError(
                f"model {self.spec!r} is served over an API that returns top-k log-probabilities only, so it "
                "cannot give full-vocabulary distributions; use a local backend for exact scoring"
            )
        if top_k > self.capabilities.topk_logprobs:
            raise CapabilityError(
                f"asked for top-{top_k} log-probabilities; {self.spec!r} offers at most "
                f"{self.capabilities.topk_logprobs} (vLLM: raise it with --max-logprobs)"
            )
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        futures = []
        for p, c in zip(prompts, continuations):
            if not isinstance(p, str) or not isinstance(c, str):
                raise CapabilityError(
                    "the openai backend scores text prompts and text continuations only (no chat, no token ids)"
                )
            futures.append(self._pool.submit(self._score_one, p, c, top_k))
        return [f.result() for f in futures]

    def _score_one(self, prompt: str, cont: str, top_k: int) -> TokenScores:
        resp = self._call(
            self.client.completions.create,
            model=self.name,
            prompt=prompt + cont,
            echo=True,
            max_tokens=1,
            temperature=0,
            logprobs=max(1, top_k),
        )
        lp = resp.choices[0].logprobs
        if lp is None or not lp.tokens or lp.text_offset is None:
            raise CapabilityError(
                f"{self.base_url} did not return prompt log-probabilities (echo with logprobs); "
                "this server cannot score continuations"
            )
        start, end = len(prompt), len(prompt) + len(cont)
        toks, lps, tops = [], [], []
        for i, (tok, off) in enumerate(zip(lp.tokens, lp.text_offset)):
            if off < start or off >= end:
                continue
            toks.append(tok)
            lps.append(float(lp.token_logprobs[i]) if lp.token_logprobs[i] is not None else float("nan"))
            if top_k:
                cand = (lp.top_logprobs or [None] * len(lp.tokens))[i] or {}
                tops.append(tuple(sorted(cand.items(), key=lambda kv: -kv[1])[:top_k]))
        return TokenScores(
            token_ids=(), tokens=tuple(toks), logprobs=tuple(lps), top_logprobs=tuple(tops) if top_k else None
        )


def _api_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(e, "message", e))


def _chat_logprobs(choice: Any) -> list[tuple[str, float, tuple[tuple[str, float], ...]]] | None:
    """A chat choice's per-token log-probabilities, or None when the server sent none. A token's text is taken
    from its bytes where the server gives them (a multi-byte character can be split across tokens)."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None

    def text(t: Any) -> str:
        raw = getattr(t, "bytes", None)
        return bytes(raw).decode("utf-8", errors="replace") if raw else str(t.token)

    return [(text(t), float(t.logprob), tuple((text(a), float(a.logprob)) for a in (t.top_logprobs or ())))
            for t in content]


def _completion(text: str, finish: str | None, usage: Any, cfg: GenerationConfig) -> Completion:
    hit = find_stop(text, cfg.stop)
    stop = None
    if hit:  # servers that do not strip the stop string, or that ignore some stops
        text, stop, finish = text[: hit[0]], hit[1], "stop"
    return Completion(
        text=text,
        finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        stop=stop,
    )


def load(resolved: ResolvedSpec, *, spec: str, options: ModelOptions) -> OpenAIModel:
    name, url = parse_target(resolved.target)
    key = os.environ.get(options.api_key_env)
    if not key and not _is_local(url):
        raise ModelSpecError(
            f"no API key for {url}: set the environment variable {options.api_key_env} (or choose another "
            "variable with --api-key-env)"
        )
    model = OpenAIModel(
        name, url, spec=spec, api_key=key, concurrency=options.concurrency, timeout=options.timeout,
        max_retries=options.max_retries,
    )
    # Check the server now, so a typo or a server that is down fails at start-up with a clear message.
    probe = model.client.with_options(max_retries=min(1, options.max_retries))
    listed = model._call(probe.models.list)
    names = [m.id for m in getattr(listed, "data", [])]
    if names and name not in names:
        model.close()
        raise ModelSpecError(f"server {url} does not serve {name!r}; it serves: {', '.join(names[:20])}")
    return model
