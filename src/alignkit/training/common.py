"""What the SFT and DPO trainers share: loading a model spec for training, the LIMA optimiser preset,
progress and loss reporting, and the output folder (adapter or full weights, tokenizer, ``alignkit.json``,
model card)."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignkit import _fault
from alignkit.errors import InputError, ModelLoadError
from alignkit.models.registry import resolve

INFO_FILE = "alignkit.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings shared by ``train sft`` and ``train dpo``. The defaults are LIMA's *optimiser*
    (the ``lima-optimiser`` preset): AdamW (betas 0.9 / 0.95), weight decay 0.1, linear decay, no warm-up -- with
    alignkit's short CPU schedule (3 epochs, batch 4, 512 tokens, LoRA). ``train sft --recipe lima`` is LIMA's
    whole recipe (:data:`LIMA_RECIPE`)."""

    epochs: float = field(default=3.0, metadata={"gt": 0, "help": "passes over the data (LIMA used 15 on a 65B model)"})
    learning_rate: float | None = field(default=None, metadata={"gt": 0,
        "help": "peak learning rate (default: 2e-4 with LoRA, 1e-5 for full fine-tuning as in LIMA)"})
    batch_size: int = field(default=4, metadata={"min": 1, "help": "sequences per optimiser step (per device)"})
    grad_accum: int = field(default=1, metadata={"min": 1, "help": "gradient accumulation steps"})
    weight_decay: float = field(default=0.1, metadata={"min": 0, "help": "AdamW weight decay (LIMA: 0.1)"})
    warmup_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1, "help": "share of steps spent warming up (LIMA: none)"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule (LIMA: linear decay)",
                                                       "choices": ["linear", "cosine", "constant"]})
    max_length: int = field(default=512, metadata={"min": 2, "help": "tokens per training sequence; longer ones are cut"})
    seed: int = field(default=0, metadata={"min": 0, "help": "random seed (data order, LoRA initialisation)"})
    save_steps: int = field(default=50, metadata={"min": 1, "help": "save a resumable checkpoint every N optimiser steps"})
    logging_steps: int = field(default=1, metadata={"min": 1, "help": "report the loss every N optimiser steps"})
    max_steps: int = field(default=-1, metadata={"min": 1, "or": -1, "help": "stop after N optimiser steps (-1: run all epochs)"})
    min_learning_rate: float = field(default=0.0, metadata={"min": 0, "help": (
        "where the linear decay ends (0: zero; LIMA: 1e-6 from 1e-5)")})
    residual_dropout: float = field(default=0.0, metadata={"min": 0, "max": 0.9, "help": (
        "SFT: dropout on every layer's residual branches, rising linearly from 0 at the first layer to this at the "
        "last (LIMA: 0.2 for smaller models, 0.3 at 65B)")})


#: LIMA's recipe (Zhou et al., 2023) for models below 65B, as far as one CPU can follow it: 15 epochs of full
#: fine-tuning, lr 1e-5 decaying linearly to 1e-6, no warm-up, weight decay 0.1, AdamW (0.9, 0.95), an effective
#: batch of 64 sequences (4 x 16 gradient accumulation), 2048 tokens, residual dropout rising over the layers to
#: 0.2, and the checkpoint chosen on a held-out dev set (LIMA: 50 examples, judged; here: the lowest dev loss
#: over epochs, on min(50, 10% of the data)). The end-of-turn marker LIMA adds is what alignkit's layouts already
#: train: the closing fence (urial format) or the chat template's turn end.
LIMA_RECIPE: dict[str, Any] = {"epochs": 15.0, "learning_rate": 1e-5, "min_learning_rate": 1e-6, "scheduler": "linear",
                               "warmup_ratio": 0.0, "weight_decay": 0.1, "batch_size": 4, "grad_accum": 16,
                               "max_length": 2048, "residual_dropout": 0.2, "full": True, "dev_size": -1}
RECIPES = {"lima-optimiser": {}, "lima": LIMA_RECIPE}


@dataclass(frozen=True)
class Tuning:
    """What is trained."""

    full: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    lora_r: int = field(default=16, metadata={"min": 1, "help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"min": 1, "help": "LoRA alpha (scaling = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"min": 0, "max": 1, "help": "dropout on the LoRA path"})
    target_modules: str = field(default="all-linear", metadata={
        "help": "modules LoRA adapts: all-linear, or comma-separated module names (e.g. q_proj,v_proj)"})
    merge: bool = field(default=False, metadata={
        "help": "also save the LoRA merged into full weights (in OUTPUT/merged, loadable as a folder)"})

    def learning_rate(self, recipe: Recipe) -> float:
        if recipe.learning_rate is not None:
            return recipe.learning_rate
        return 1e-5 if self.full else 2e-4

    def lora_config(self, task: str = "CAUSAL_LM") -> Any:
        from peft import LoraConfig

        if self.lora_r <= 0:
            raise InputError(f"--lora-r must be positive, got {self.lora_r}")
        targets: Any = self.target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=targets, task_type=task, bias="none")


def check_recipe(recipe: Recipe, *, sft: bool = False) -> None:
    if recipe.residual_dropout > 0 and not sft:
        raise InputError("--residual-dropout is part of the SFT recipe (LIMA); the preference, reward and online "
                         "trainers do not take it")
    for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
        if getattr(recipe, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(recipe, name)}")
    if recipe.epochs <= 0 and recipe.max_steps <= 0:
        raise InputError("--epochs must be positive (or give --max-steps)")
    if recipe.learning_rate is not None and not (0 < recipe.learning_rate < 1):
        raise InputError(f"--learning-rate must be in (0, 1), got {recipe.learning_rate}")


def source_of(spec: str) -> str:
    """The local folder (or hub id) a model spec trains from: aliases and GGUF files go through the same
    cached conversion as inference."""
    from alignkit.models.hf_loader import weights_source

    resolved = resolve(spec)
    if resolved.backend != "hf":
        raise InputError(f"training needs a transformers model; {spec!r} is a {resolved.backend} model")
    if resolved.kind == "adapter":
        raise InputError(f"{spec!r} is an adapter folder; train on its base model with --adapter {spec}")
    return weights_source(resolved)[0]


def load_for_training(spec: str, *, adapter: str | None = None, trainable_adapter: bool = False,
                      tokenizer_from: str | None = None):
    """(model in float32 on CPU or the default device, tokenizer, source folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = source_of(spec)
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_from or source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load {spec!r} for training from {source}: {str(e).splitlines()[0]}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if adapter:
        from peft import PeftModel

        from alignkit.models.hf import check_adapter_folder

        check_adapter_folder(adapter)
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable_adapter)
    return model, tok, source


def read_info(folder: str | Path) -> dict[str, Any] | None:
    p = Path(folder) / INFO_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise InputError(f"{p} is not valid JSON: {e}") from e


def process_state() -> Any:
    """accelerate's process state: one process, or one of several started by ``accelerate launch`` or
    ``torchrun`` (on a machine without CUDA they talk over gloo). The trainer shares it."""
    from accelerate import PartialState

    return PartialState(cpu=_no_cuda())


def say(message: str) -> None:
    """A progress line on stderr, from the main process only."""
    if process_state().is_main_process:
        print(message, file=sys.stderr)


def prepare_output(output: str, resume: bool, overwrite: bool) -> Path:
    """Check (every process, before anyone changes anything), then make (the main process) the output folder."""
    state = process_state()
    out = Path(output)
    ckpts = out / CHECKPOINTS
    if resume:
        if not any(ckpts.glob("checkpoint-*")):
            raise InputError(f"--resume: no checkpoint in {ckpts} to resume from")
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {output!r} is not empty; pass --resume to continue a run there, "
                         "--overwrite to replace it, or choose another folder")
    state.wait_for_everyone()  # every process has checked the folder before the main one changes it
    if state.is_main_process:
        if out.exists() and overwrite:
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    return out


def training_args_kwargs(recipe: Recipe, tuning: Tuning, output: Path) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO (the LIMA preset unless overridden)."""
    return dict(
        output_dir=str(output / CHECKPOINTS),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=tuning.learning_rate(recipe),
        weight_decay=recipe.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        optim="adamw_torch",
        **_schedule(recipe, tuning),
        warmup_steps=float(recipe.warmup_ratio),  # a float below 1 is a ratio of the steps
        logging_steps=recipe.logging_steps,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to="none",
        use_cpu=_no_cuda(),  # several CPU processes (accelerate launch, torchrun) then train together over gloo
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )


def _schedule(recipe: Recipe, tuning: Tuning) -> dict[str, Any]:
    """The learning-rate schedule: a linear decay that ends above zero is transformers' polynomial schedule with
    power 1 (exactly linear from the peak to ``min_learning_rate``)."""
    if recipe.min_learning_rate > 0:
        if recipe.scheduler != "linear":
            raise InputError(f"--min-learning-rate applies to the linear schedule, not {recipe.scheduler!r}")
        if not recipe.min_learning_rate < tuning.learning_rate(recipe):
            raise InputError(f"--min-learning-rate {recipe.min_learning_rate} must be below the learning rate "
                             f"{tuning.learning_rate(recipe)}")
        return {"lr_scheduler_type": "polynomial",
                "lr_scheduler_kwargs": {"lr_end": recipe.min_learning_rate, "power": 1.0}}
    return {"lr_scheduler_type": recipe.scheduler}


def residual_dropout(model: Any, top: float) -> dict[str, Any]:
    """LIMA's residual dropout: each decoder layer's residual branches (what the attention and the MLP add to
    the residual stream) pass through dropout with a rate rising linearly from 0 at the first layer to ``top`` at
    the last, in training mode only (forward hooks; nothing is saved with the model). Gemma-style layers (norms
    after each branch) are hooked at those norms, Llama-style layers at the attention and MLP outputs; other
    architectures are refused. Returns ``{"layers", "rates", "hooks"}`` (``hooks`` to remove them)."""
    import torch

    layers = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(
                hasattr(m, "self_attn") and hasattr(m, "mlp") for m in module):
            layers = module
            break
    if layers is None:
        raise InputError("--residual-dropout: this architecture exposes no decoder layers with self_attn and mlp; "
                         "train without it")
    n = len(layers)
    rates = [top * i / (n - 1) if n > 1 else top for i in range(n)]
    hooks = []

    def make(rate: float):
        def hook(mod, args, output):
            if not mod.training or rate <= 0:
                return output
            if isinstance(output, tuple):
                return (torch.nn.functional.dropout(output[0], rate, True), *output[1:])
            return torch.nn.functional.dropout(output, rate, True)
        return hook

    for layer, rate in zip(layers, rates):
        if hasattr(layer, "pre_feedforward_layernorm") and hasattr(layer, "post_feedforward_layernorm"):
            targets = (layer.post_attention_layernorm, layer.post_feedforward_layernorm)  # Gemma 2/3 sandwich norms
        else:
            targets = (layer.self_attn, layer.mlp)
        hooks += [t.register_forward_hook(make(rate)) for t in targets]
    return {"layers": n, "rates": [round(r, 4) for r in rates], "hooks": hooks}


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def progress_callback(output: Path):
    """A transformers callback that prints one line per logged step (step, loss, lr, tokens/s) to stderr
    and appends the same to ``OUTPUT/train_log.jsonl``."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.log_path = output / LOG_FILE
            self.history: list[dict[str, Any]] = []

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.start_step = state.global_step
            if not state.is_world_process_zero:  # one log and one set of lines, however many processes
                return
            _trim_log(self.log_path, state.global_step)
            print(f"alignkit train: {state.max_steps} optimiser steps"
                  + (f", resuming at step {state.global_step}" if state.global_step else ""), file=sys.stderr)

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or not state.is_world_process_zero:  # the logged loss is already the mean over processes
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 3), **{
                k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}}
            self.history.append(row)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if "loss" in logs:
                elapsed = time.perf_counter() - self.t0
                done = max(state.global_step - self.start_step, 1)
                eta = elapsed / done * (state.max_steps - state.global_step)
                extra = "".join(f" {k} {logs[k]:.4g}" for k in ("rewards/accuracies", "rewards/margins") if k in logs)
                print(f"  step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                      f"lr {logs.get('learning_rate', 0):.2e}{extra}  eta {eta:.0f}s", file=sys.stderr)

        def on_save(self, args, state, control, **kw):
            _fault.checkpoint_saved(state.global_step)

    return Progress()


def start_trainer(trainer_cls: Any, output: Path, *, model: Any, tuning: Tuning, adapter: str | None,
                  peft_task: str = "CAUSAL_LM", **kwargs: Any) -> tuple[Any, Any, int]:
    """A TRL trainer with alignkit's progress lines and loss log (TRL's own printers removed), LoRA unless full
    fine-tuning or training further from an adapter; returns (trainer, progress callback, trainable parameters)."""
    progress = progress_callback(output)
    trainer = trainer_cls(model=model, peft_config=None if (tuning.full or adapter) else tuning.lora_config(peft_task),
                          callbacks=[progress], **kwargs)
    quiet(trainer)
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return trainer, progress, n_params


def run_training(trainer: Any, resume: bool) -> float:
    """Train (from the last checkpoint in the output folder with ``resume``); the seconds it took."""
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    return time.perf_counter() - t0


def _trim_log(path: Path, step: int) -> None:
    """A resumed run starts from its checkpoint: log rows past it (written before a crash) are dropped, so the
    log never holds a step twice; a torn last line goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")


def quiet(trainer: Any) -> None:
    """Our progress lines replace transformers' printed log dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def count_tokens(dataset: Any, columns: tuple[str, ...]) -> int:
    return int(sum(len(x) for c in columns if c in dataset.column_names for x in dataset[c]))


def write_outputs(*, output: Path, model: Any, tokenizer: Any, tuning: Tuning, info: dict[str, Any],
                  base_spec: str) -> None:
    """Adapter (or full weights), tokenizer, alignkit.json and README.md model card: written once, by the main
    process, while the others wait."""
    state = process_state()
    if state.is_main_process:
        _write_outputs(output=output, model=model, tokenizer=tokenizer, tuning=tuning,
                       info={**info, "processes": state.num_processes}, base_spec=base_spec)
    state.wait_for_everyone()


def _write_outputs(*, output: Path, model: Any, tokenizer: Any, tuning: Tuning, info: dict[str, Any],
                   base_spec: str) -> None:
    info = {**info, "output": str(output)}
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
    if not tuning.full:
        cfg_path = output / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_spec  # the spec alignkit resolves, not this machine's cache path
        cfg_path.write_text(json.dumps(cfg, indent=2))
        if tuning.merge:
            merged = model.merge_and_unload()
            (output / "merged").mkdir(exist_ok=True)
            merged.save_pretrained(str(output / "merged"))
            tokenizer.save_pretrained(str(output / "merged"))
            (output / "merged" / INFO_FILE).write_text(json.dumps({**info, "merged": True}, indent=2))
            info = {**info, "merged_into": "merged/"}
    (output / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False))
    (output / "README.md").write_text(model_card(info), encoding="utf-8")


def model_card(info: dict[str, Any]) -> str:
    r = info["result"]
    fmt = info["format"]
    method = info["inference"]
    how = " ".join(f"--{k} {v}" for k, v in method.items() if v)
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: " + ("transformers" if info["tuning"]["full"] else "peft"),
        "tags: [alignkit, " + info["kind"] + ("" if info["tuning"]["full"] else ", lora") + "]",
        "---",
        "",
        f"# {info['kind'].upper()} of {info['base_model']} (alignkit {info['alignkit_version']})",
        "",
        f"- Base model: `{info['base_model']}`" + (f" with adapter `{info['init_adapter']}`" if info.get("init_adapter") else ""),
        f"- Data: `{info['data']['path']}` — {info['data']['records']} records, sha256 prefix `{info['data']['hash']}`",
        f"- Prompt format: `{fmt['name']}`" + (f" (template `{fmt['template']}`)" if fmt.get("template") else ""),
        f"- Use it: `alignkit chat --model {info['base_model']} --adapter {info['output']} {how}` (or `--method auto`)",
        f"- Tuning: {'full fine-tuning' if info['tuning']['full'] else 'LoRA r=' + str(info['tuning']['lora_r']) + ', alpha=' + str(info['tuning']['lora_alpha'])}",
        f"- Recipe: {', '.join(f'{k}={v}' for k, v in info['recipe'].items())}",
    ]
    if "beta" in info:
        lines.append(f"- {info['kind'].upper()}: loss {info.get('loss_type')}, beta {info['beta']} (reference: "
                     f"{info.get('reference', 'the frozen starting model, via adapter switching')})")
    lines += [
        f"- Result: {r['steps']} steps, {r['train_seconds']:.0f} s, final loss {r['final_loss']}, "
        f"{r['tokens_per_second']:.0f} tokens/s",
        "",
        "Trained with `alignkit train` on TRL and PEFT. The loss history is in `train_log.jsonl`; the full record "
        "in `alignkit.json`.",
        "",
    ]
    return "\n".join(lines)


def final_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h and isinstance(h["loss"], (int, float))]
    return round(losses[-1], 4) if losses and math.isfinite(losses[-1]) else None


def result_dict(*, steps: int, seconds: float, history: list[dict[str, Any]], tokens: int, n_params: int,
                **extra: Any) -> dict[str, Any]:
    """The ``result`` block of alignkit.json (and the model card)."""
    return {
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "final_loss": final_loss(history),
        "first_loss": next((h["loss"] for h in history if "loss" in h), None),
        **extra,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "trainable_parameters": n_params,
    }


def recipe_dict(recipe: Recipe, tuning: Tuning) -> dict[str, Any]:
    d = asdict(recipe)
    d["learning_rate"] = tuning.learning_rate(recipe)
    d["optimizer"] = "adamw(0.9,0.95)"
    return d
