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
