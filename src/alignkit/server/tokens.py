"""Token ids and log-probabilities on the completion endpoints: what the served model reads for a prompt
(``/tokenize``), token-id prompts taken back to their text, and OpenAI-shaped log-probabilities from a
teacher-forced pass of the same model."""

from __future__ import annotations

from typing import Any

from alignkit.errors import AlignkitError
from alignkit.methods.base import prepared_for_backend
from alignkit.server.limits import APIError


def tokens_of(model: Any, prompt: Any, add_special: bool) -> list[int]:
    """The ids the served model reads for ``prompt``: a chat as the route prepares it for the model under it
    (template, in-context preamble; a rewriter stage runs), then that model's own tokenisation; text as given."""
    try:
        if isinstance(prompt, str):
            ids = list(model.encode(prompt))
            bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
            return ([bos] + ids) if add_special and bos is not None and (not ids or ids[0] != bos) else ids
        inner, prompt, _, _ = prepared_for_backend(model, prompt)
        if not hasattr(inner, "encode_prompt"):
            raise APIError(400, "this model cannot tokenize here (no local tokenizer)")
        return list(inner.encode_prompt(prompt))
    except AlignkitError as e:
        raise APIError(400, str(e)) from None


def strip_bos(model: Any, ids: list[int]) -> list[int]:
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return list(ids[1:]) if bos is not None and ids and ids[0] == bos else list(ids)


def from_ids(model: Any, ids: list[int]) -> str:
    """A token-id prompt as the text it stands for -- only when that text tokenises back to the same ids (so the
    model sees exactly the tokens sent); a leading BOS is dropped (the model adds its own)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not hasattr(model, "encode"):
        raise APIError(400, "token-id prompts need a local model with a tokenizer; send text", param="prompt")
    bos = getattr(tok, "bos_token_id", None)
    body = ids[1:] if bos is not None and ids and ids[0] == bos else list(ids)
    vocab = len(tok) if hasattr(tok, "__len__") else None
    if vocab and any(t >= vocab for t in body):
        raise APIError(400, f"token id out of range (the vocabulary has {vocab} tokens)", param="prompt")
    text = tok.decode(body, skip_special_tokens=False)
    if list(model.encode(text)) != body:
        raise APIError(400, "these token ids are not how this model's tokenizer writes their text, so the model "
                       "would see other tokens; send the text instead", param="prompt")
    return text


def logprobs_of(model: Any, req: Any, prompt: Any, comps, chat: bool, prompt_ids: list[int] | None = None) -> list[Any]:
    """Per-choice log-probabilities of the returned text, from a teacher-forced pass of the same model."""
    k = (req.top_logprobs or 0) if chat else (req.logprobs or 0)
    if not model.capabilities.topk_logprobs and not model.capabilities.full_vocab_logits:
        raise APIError(400, "this model does not give log-probabilities", param="logprobs")
    if not chat and req.echo and getattr(model, "method", "none") != "none":
        raise APIError(400, "echo with logprobs needs a server started with --method none", param="echo")
    out = []
    for c in comps:
        if not chat and req.echo:  # the prompt's own tokens too, each given what precedes it (and BOS)
            # token ids, not text: the prompt's tokens then the generated ones, never re-tokenised across the seam
            ids = list(prompt_ids) if prompt_ids is not None else list(model.encode(prompt))
            sc = model.score([""], [ids + list(c.token_ids or model.encode(c.text))], top_k=max(k, 1))[0]
        else:
            sc = model.score([prompt], [c.text], top_k=max(k, 1))[0]
        piece = _piece_fn(model)
        pieces = [piece(t) for t in sc.tokens]
        tops = [tuple((piece(t), v) for t, v in top) for top in (sc.top_logprobs or [()] * len(pieces))]
        if chat:
            out.append({"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": tt, "logprob": v, "bytes": list(tt.encode())} for tt, v in top[:k]]}
                for t, lp, top in zip(pieces, sc.logprobs, tops)]})
        else:
            offsets, pos = [], 0
            for t in pieces:
                offsets.append(pos)
                pos += len(t)
            lps = list(sc.logprobs)
            if req.echo and lps:
                lps[0] = None  # nothing precedes the first token
            out.append({"tokens": pieces, "token_logprobs": lps,
                        "top_logprobs": [dict(top[:k]) for top in tops], "text_offset": offsets})
    return out


def _piece_fn(model: Any):
    """Raw vocabulary tokens ('Ġthe', '▁the') -> the text they stand for (' the'), as OpenAI reports tokens."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not hasattr(tok, "convert_tokens_to_string"):  # llama.cpp's tokens are text already
        return lambda t: t
    return lambda t: tok.convert_tokens_to_string([t])
