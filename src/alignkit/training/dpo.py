"""Preference optimisation on TRL: DPO (every loss TRL's ``DPOTrainer`` offers), KTO, ORPO and SimPO, LoRA by
default, on the same ``{prompt, chosen, rejected}`` data, with the same output folder and model card.

* **DPO** and **KTO** are tied to a reference model, never a second copy of the weights: starting from the base
  model, the reference is the base with the LoRA adapter switched off; starting from an SFT adapter
  (``--adapter``), DPO keeps a frozen copy of that adapter ("ref") next to the trained one, so the result is
  again one adapter on the base model, and the reference is the SFT model (KTO, from an adapter, uses TRL's
  default: the adapter switched off, i.e. the base). KTO is unpaired: each pair gives a desirable (chosen) and
  an undesirable (rejected) example.
* **ORPO** (odds-ratio penalty on top of the SFT loss) and **SimPO** (length-normalised margin, TRL's CPO trainer
  with ``loss_type="simpo"`` and no behaviour-cloning term) are reference-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from alignkit.errors import InputError
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.training import common, data
from alignkit.training.format import PromptFormat, check_format, render_urial, urial_preamble
from alignkit.version import __version__

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
#: per trainer: its loss variants (first = default), its default beta, whether it needs a reference model
FAMILY: dict[str, dict[str, Any]] = {
    "dpo": {"losses": DPO_LOSSES, "beta": 0.1, "reference": True},
    "kto": {"losses": ("kto", "apo_zero_unpaired"), "beta": 0.1, "reference": True},
    "orpo": {"losses": ("orpo",), "beta": 0.1, "reference": False},
    "simpo": {"losses": ("simpo",), "beta": 2.0, "reference": False},
}


PREFS_HELP = "preference data: a JSONL file of {id, prompt, chosen, rejected} records"


@dataclass(frozen=True)
class Start:
    """Where a tuning job starts, what it writes and in which layout: shared by the preference and online
    trainers."""

    data: str = field(default="", metadata={"help": PREFS_HELP, "required": True})
    output: str = field(default="", metadata={"help": "output folder (adapter or model, model card, log)",
                                              "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model spec"})
    adapter: str | None = field(default=None, metadata={
        "help": "start from this LoRA adapter (e.g. the SFT one): it is trained further (for DPO a frozen copy of "
                "it is the reference)"})
    format: str = field(default="auto", metadata={
        "help": "conversation layout (auto: the starting adapter's, else chat-template if the tokenizer has one, "
                "else urial)", "choices": ["auto", "urial", "chat-template"]})
    template: str = field(default="urial-k0", metadata={"help": "--format urial: the K=0 template"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in OUTPUT"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT folder"})


@dataclass(frozen=True)
class DPOJob(Start):
    beta: float = field(default=0.1, metadata={"gt": 0,
        "help": "DPO beta: strength of the KL tie to the reference (DeRa's lambda rescales it at decoding time)"})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "DPO loss variant (TRL's loss_type): sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), exo_pair, "
                "nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm",
        "choices": list(DPO_LOSSES)})


@dataclass(frozen=True)
class FamilyJob(Start):
    """The options of ``train kto|orpo|simpo``: DPO's, with the loss and beta of each trainer."""

    beta: float | None = field(default=None, metadata={"gt": 0,
        "help": "the trainer's beta (default: KTO 0.1; ORPO 0.1, the weight of its odds-ratio term; SimPO 2.0, "
                "its reward scale)"})
    loss_type: str | None = field(default=None, metadata={
        "help": "loss variant: kto or apo_zero_unpaired for KTO (default kto); ORPO and SimPO have one"})
    simpo_gamma: float = field(default=0.5, metadata={"min": 0, "help": "SimPO: target reward margin"})


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
    preamble = urial_preamble(fmt.template) if fmt.name == "urial" else ""
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


def unpaired_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO's rows: each pair gives a desirable (chosen) and an undesirable (rejected) completion."""
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def _trainer(kind: str, job: Any, beta: float, loss: str, recipe: common.Recipe, tuning: common.Tuning,
             output: Any) -> tuple[Any, Any]:
    """(trainer class, its config) for one member of the family."""
    base = {**common.training_args_kwargs(recipe, tuning, output), "beta": beta, "max_length": recipe.max_length}
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig(**base, loss_type=[loss], precompute_ref_log_probs=False)
    if kind == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig(**base, loss_type=loss)
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**base)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # SimPO = CPO's simpo loss with no behaviour-cloning (NLL) term
    return CPOTrainer, CPOConfig(**base, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=job.simpo_gamma)


def run_preference(job: Any, recipe: common.Recipe, tuning: common.Tuning, kind: str = "dpo") -> dict[str, Any]:
    """Train one member of the preference family (``dpo``, ``kto``, ``orpo``, ``simpo``) on preference pairs."""
    if kind not in FAMILY:
        raise InputError(f"unknown preference trainer {kind!r}; choose one of {', '.join(FAMILY)}")
    spec = FAMILY[kind]
    common.check_recipe(recipe)
    beta = spec["beta"] if job.beta is None else job.beta
    loss = job.loss_type or spec["losses"][0]
    if loss not in spec["losses"]:
        raise InputError(f"--loss-type {loss!r} is not a {kind.upper()} loss; choose one of {', '.join(spec['losses'])}")
    if beta <= 0:
        raise InputError(f"--beta must be positive, got {beta}")
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

    rows = pair_rows(loaded.records, fmt)
    dataset = Dataset.from_list(unpaired_rows(rows) if kind == "kto" else rows)
    trainer_cls, args = _trainer(kind, job, beta, loss, recipe, tuning, output)
    trainer, progress, n_params = common.start_trainer(trainer_cls, output, model=model, tuning=tuning,
                                                       adapter=job.adapter, args=args, train_dataset=dataset,
                                                       processing_class=tokenizer)
    trained = trainer.model
    if not spec["reference"]:
        ref = "none (reference-free)"
    elif job.adapter:
        ref = "the frozen starting adapter" if kind == "dpo" else "the base (the adapter switched off)"
    else:
        ref = "a full copy" if tuning.full else "the base (adapter off)"
    common.say(f"alignkit train {kind}: {len(rows)} pairs, format {fmt.name}, loss {loss}, beta {beta}, reference {ref} "
               f"({n_params:,} trainable parameters)")
    seconds = common.run_training(trainer, job.resume)
    tokens = trainer.state.num_input_tokens_seen or 0
    if hasattr(trained, "peft_config") and "ref" in trained.peft_config:
        trained.delete_adapter("ref")

    last = next((h for h in reversed(progress.history) if "loss" in h), {})
    info = {
        "kind": kind,
        "alignkit_version": __version__,
        "base_model": job.model,
        "base_source": source,
        "init_adapter": job.adapter,
        "beta": beta,
        "loss_type": loss,
        "reference": ref,
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
    if kind == "simpo":
        info["simpo_gamma"] = job.simpo_gamma
    common.write_outputs(output=output, model=trained, tokenizer=tokenizer, tuning=tuning, info=info,
                         base_spec=job.model)
    common.say(f"alignkit train {kind}: wrote {output} (loss {info['result']['first_loss']} -> "
               f"{info['result']['final_loss']}, {seconds:.0f} s)")
    return info
