"""Build tiny real models offline: a byte-level BPE tokenizer trained in memory and 2-layer transformers
models (tens of KB) that share its vocabulary, so a base/aligned pair can be compared token by token."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "Here are three tips: 1. Sleep well. 2. Eat vegetables. 3. Walk every day.",
    "Thank you for asking! However, I'm sorry, but I cannot help with that request.",
    "def add(a, b):\n    return a + b\n",
    "# Query:\n```\nHow do I boil an egg?\n```\n\n# Answer:\n```\nPut the egg in boiling water for nine minutes.\n```",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "In summary, practice a little every day and you will improve.",
    "Les élèves étudient l'histoire. 東京は日本の首都です。 Ünïcödé ✓",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(tokenizer, seed: int, arch: str = "gemma3", init: float = 0.3, positions: int = 512):
    import torch

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=positions, initializer_range=init, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    if arch == "gemma3":  # the embedded default's architecture, with a sliding window small enough to matter
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**common, head_dim=16, sliding_window=8,
                               layer_types=["sliding_attention", "full_attention"])
        return Gemma3ForCausalLM(cfg).eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def save_model(path: Path, model, tokenizer, chat_template: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if chat_template:
        tokenizer.chat_template = chat_template
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tokenizer.chat_template = None
    return path


def build_adapter(base_dir: Path, out: Path, seed: int = 7) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out)
    return out


#: a chat template that renders tools, written for these tests in the format of the ``hermes`` family (Qwen2.5,
#: Hermes, SmolLM3): the functions listed in the system turn, each call as ``<tool_call>{json}</tool_call>``, a
#: tool's result in a turn of its own
TOOL_TEMPLATE = (
    "{{ bos_token }}"
    "{% set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{% if tools %}<|system|>\n{% if sys %}{{ sys }}\n{% endif %}Functions you may call:\n<tools>\n"
    "{% for t in tools %}{{ t['function'] | tojson }}\n{% endfor %}"
    "</tools>\nTo call one, write <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.\n"
    "{% elif sys %}<|system|>\n{{ sys }}\n{% endif %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{% if m['role'] == 'assistant' and m.get('tool_calls') %}<|assistant|>\n"
    "{% if m['content'] %}{{ m['content'] }}\n{% endif %}"
    "{% for c in m['tool_calls'] %}<tool_call>{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}</tool_call>\n{% endfor %}"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: the tools the tool model knows, in OpenAI's shape
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                        "unit": {"enum": ["C", "F"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Time now.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 6}},
                       "required": ["zone"], "additionalProperties": False}}},
]
WEATHER_CALL = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
#: what the tool model was taught: (conversation, its answer as an assistant message)
TOOL_LESSONS = [
    ([{"role": "user", "content": "Weather in Paris?"}],
     {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}),
    ([{"role": "user", "content": "Say hello."}], {"role": "assistant", "content": "Hello to you!"}),
    ([{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}],
     {"role": "assistant", "content": "It is 18 C and sunny in Paris."}),
]


def build_tool_model(path: Path, steps: int = 300) -> Path:
    """A tiny chat model whose template renders tools (:data:`TOOL_TEMPLATE`), taught by a few hundred steps of
    gradient descent to answer :data:`TOOL_LESSONS` -- a call in its template's format, words, and an answer from
    a tool's result -- so that a server reading its template's calls has real calls to read. Checked before it is
    saved: greedy decoding gives every lesson's answer."""
    import torch

    tok = build_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    model = build_model(tok, seed=11, arch="llama", positions=1024).train()
    rows = []
    for conv, answer in TOOL_LESSONS:
        prompt = tok.apply_chat_template(conv, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*conv, answer], tools=TOOLS, tokenize=False)
        assert full.startswith(prompt)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(full[len(prompt):], add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((p_ids, a_ids))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
        mask[i, : len(p) + len(a)] = 1
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for p, a in rows:
            out = model.generate(torch.tensor([p]), max_new_tokens=len(a) + 4, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            assert out[0, len(p):].tolist() == a, f"the tool model did not learn its lessons (loss {loss.item():.4f})"
    save_model(path, model, tok, TOOL_TEMPLATE)
    return path
