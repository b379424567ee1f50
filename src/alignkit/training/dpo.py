"""Direct preference optimisation on TRL's ``DPOTrainer``, LoRA by default.

The reference model is never a second copy of the weights: starting from the base model, the reference is
the base with the LoRA adapter switched off; starting from an SFT adapter (``--adapter``), TRL keeps a
frozen copy of that adapter ("ref") next to the trained one, so the result is again one adapter on the base
model (loadable with ``--adapter``), and the reference is the SFT model.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from alignkit.errors import InputError
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.training import common, data
from alignkit.training.format import PromptFormat, _urial_preamble, check_format, render_urial


@dataclass(frozen=True)
class DPOJob:
    data: str = field(default="", metadata={
        "help": "preference data: a JSONL file of {id, prompt, chosen, rejected} records", "required": True})
    output: str = field(default="", metadata={"help": "output folder (adapter or model, model card, log)",
                                              "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model spec"})
    adapter: str | None = field(default=None, metadata={
        "help": "start from this LoRA adapter (e.g. the SFT one): it is trained further and a frozen copy of it is "
                "the reference"})
    beta: float = field(default=0.1, metadata={"gt": 0,
        "help": "DPO beta: strength of the KL tie to the reference (DeRa's lambda rescales it at decoding time)"})
    loss_type: str = field(default="sigmoid", metadata={"help": "DPO loss variant (TRL's loss_type)",
                                                        "choices": ["sigmoid", "ipo", "hinge", "robust"]})
    format: str = field(default="auto", metadata={
        "help": "conversation layout (auto: the starting adapter's, else chat-template if the tokenizer has one, "
                "else urial)", "choices": ["auto", "urial", "chat-template"]})
    template: str = field(default="urial-k0", metadata={"help": "--format urial: the K=0 template"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in OUTPUT"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT folder"})


def resolve_format(job: DPOJob, tokenizer: Any) -> PromptFormat:
    if job.format == "auto" and job.adapter:
        info = common.read_info(job.adapter)
        if info and isinstance(info.get("format"), dict):
            return PromptFormat(info["format"]["name"], info["format"].get("template"))
    name = job.format
    if name == "auto":
        name = "chat-template" if getattr(tokenizer, "chat_template", None) else "urial"
    return PromptFormat(name, job.template if name == "urial" else None)


def pair_rows(records: list[data.Record], fmt: PromptFormat) -> list[dict[str, Any]]:
    """TRL's preference rows: rendered text for the urial layout (one fence for prompt and both answers),
    conversational rows for chat templates (TRL applies the template)."""

    rows = []
    preamble = _urial_preamble(fmt.template) if fmt.name == "urial" else ""
    for r in records:
        msgs = data.prompt_messages(r.data)
        chosen, rejected = r.data["chosen"].strip(), r.data["rejected"].strip()
        if fmt.name == "chat-template":
            rows.append({"prompt": msgs, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
            continue
        rendered, fence = render_urial(msgs, preamble, also_fence=(chosen, rejected), open_answer=True)
        prompt = rendered.text
        rows.append({"prompt": prompt, "chosen": chosen + "\n" + fence, "rejected": rejected + "\n" + fence})
    return rows


def run_dpo(job: DPOJob, recipe: common.Recipe, tuning: common.Tuning) -> dict[str, Any]:
    common.check_recipe(recipe)
    if job.beta <= 0:
        raise InputError(f"--beta must be positive, got {job.beta}")
    if job.adapter and tuning.full:
        raise InputError("--full trains all weights; it cannot start from --adapter (merge the adapter first with "
                         "`alignkit train sft ... --merge` and pass OUTPUT/merged as --model)")
    loaded = data.load(job.data, "prefs")
    loaded.raise_if_problems("nothing was trained (`alignkit data validate --kind prefs` lists them)")
    output = common.prepare_output(job.output, job.resume, job.overwrite)
    model, tokenizer, source = common.load_for_training(job.model, adapter=job.adapter, trainable_adapter=True)
    fmt = resolve_format(job, tokenizer)
    check_format(fmt, tokenizer)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list(pair_rows(loaded.records, fmt))
    args = DPOConfig(**common.training_args_kwargs(recipe, tuning, output), beta=job.beta, loss_type=[job.loss_type],
                     max_length=recipe.max_length, precompute_ref_log_probs=False)
    progress = common.progress_callback(output)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if (tuning.full or job.adapter) else tuning.lora_config(),
        callbacks=[progress],
    )
    common.quiet(trainer)
    trained = trainer.model
    n_params = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    ref = "the frozen starting adapter" if job.adapter else ("a full copy" if tuning.full else "the base (adapter off)")
    print(f"alignkit train dpo: {len(dataset)} pairs, format {fmt.name}, beta {job.beta}, reference {ref} "
          f"({n_params:,} trainable parameters)", file=sys.stderr)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if job.resume else None)
    seconds = time.perf_counter() - t0
    tokens = trainer.state.num_input_tokens_seen or 0
    if hasattr(trained, "peft_config") and "ref" in trained.peft_config:
        trained.delete_adapter("ref")
    from alignkit import __version__

    last = next((h for h in reversed(progress.history) if "loss" in h), {})
    info = {
        "kind": "dpo",
        "alignkit_version": __version__,
        "base_model": job.model,
        "base_source": source,
        "init_adapter": job.adapter,
        "beta": job.beta,
        "loss_type": job.loss_type,
        "format": {"name": fmt.name, "template": fmt.template},
        "inference": fmt.method_options(),
        "data": {"path": job.data, "records": len(loaded.records), "hash": data.data_hash(loaded.records)},
        "tuning": asdict(tuning),
        "recipe": common.recipe_dict(recipe, tuning),
        "result": common.result_dict(steps=trainer.state.global_step, seconds=seconds, history=progress.history,
                                     tokens=tokens, n_params=n_params,
                                     final_reward_accuracy=last.get("rewards/accuracies"),
                                     final_reward_margin=last.get("rewards/margins")),
    }
    common.write_outputs(output=output, model=trained, tokenizer=tokenizer, tuning=tuning, info=info,
                         base_spec=job.model)
    print(f"alignkit train dpo: wrote {output} (loss {info['result']['first_loss']} -> {info['result']['final_loss']}, "
          f"{seconds:.0f} s)", file=sys.stderr)
    return info
