"""A tiny real model trained in the test session to say exactly what a test needs ("controlled output"):
it memorises a few texts, so greedy decoding after a text's prefix reproduces the rest of it."""

from __future__ import annotations

from pathlib import Path


def train_parrot(base_dir: Path, out: Path, pairs: list[tuple[str, str]], max_steps: int = 600, seed: int = 0) -> Path:
    """Train on ``prompt + continuation`` texts until every continuation is the greedy output after its
    prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = [torch.tensor([tok(p + c).input_ids]) for p, c in pairs]
    starts = [len(tok(p).input_ids) for p, _ in pairs]
    for step in range(max_steps):
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in batch) / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24 and _memorised(model, batch, starts):
            break
    model.eval()
    if not _memorised(model, batch, starts):
        raise RuntimeError(f"parrot did not memorise its texts (loss {loss.item():.3f})")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _memorised(model, batch, starts) -> bool:
    import torch

    with torch.no_grad():
        for ids, start in zip(batch, starts):
            pred = model(input_ids=ids).logits[0, :-1].argmax(-1)
            if not torch.equal(pred[start - 1 :], ids[0, start:]):  # the continuation is the greedy choice
                return False
    return True
