"""Reward models on TRL's ``RewardTrainer``: Bradley-Terry on ``{prompt, chosen, rejected}`` pairs, LoRA on a
sequence-classification head by default (full fine-tuning optional).

The output folder is a *scorer* (``--scorer reward:OUTPUT``, :mod:`alignkit.scoring`): the adapter with its
score head (or full weights), the tokenizer, ``alignkit.json`` with the layout the pairs were laid out in (the
scorer lays answers out the same way) and the held-out accuracy. Pairs are tokenised here, with the same
function the scorer uses, so training and scoring read identical token ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from alignkit.errors import InputError, ModelLoadError
from alignkit.models.catalog import DEFAULT_MODEL
from alignkit.training import common, data
from alignkit.training.reward_model import RewardModelScorer, reward_ids, reward_layout_for
from alignkit.version import __version__


@dataclass(frozen=True)
class RewardJob:
    data: str = field(default="", metadata={
        "help": "preference data: a JSONL file of {id, prompt, chosen, rejected} records", "required": True})
    output: str = field(default="", metadata={"help": "output folder (adapter with its score head, model card, log)",
                                              "required": True})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model spec (a score head is put on it)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out preference pairs for the reported accuracy (default: --eval-share of --data, chosen by id)"})
    eval_share: float = field(default=0.1, metadata={"min": 0, "max": 0.9,
        "help": "share of --data held out (by a hash of each id, so the split is stable) when --eval-data is not given"})
    layout: str = field(default="auto", metadata={
        "help": "how (conversation, answer) is laid out for the model (auto: its chat template if the tokenizer has "
                "one, else urial; pair: question and answer as a text pair)",
        "choices": ["auto", "urial", "chat-template", "pair"]})
    template: str = field(default="urial-k0", metadata={"help": "--layout urial: the K=0 template"})
    center_rewards: float | None = field(default=0.01, metadata={"min": 0,
        "help": "coefficient of the penalty that keeps rewards centred on zero (TRL's center_rewards_coefficient; "
                "0 turns it off)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in OUTPUT"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty OUTPUT folder"})


def held_out(record_id: Any, share: float) -> bool:
    """Whether a record is in the held-out split: a stable function of its id."""
    h = int(hashlib.sha256(str(record_id).encode("utf-8")).hexdigest()[:8], 16)
    return h % 10_000 < share * 10_000


def split(records: list[data.Record], share: float) -> tuple[list[data.Record], list[data.Record]]:
    train = [r for r in records if not held_out(r.data["id"], share)]
    test = [r for r in records if held_out(r.data["id"], share)]
    return train, test


def tokenised_pairs(records: list[data.Record], layout: Any, tokenizer: Any, max_length: int
                    ) -> tuple[list[dict[str, list[int]]], list[str]]:
    """TRL's pre-tokenised rows (``chosen_ids``, ``rejected_ids``) and the ids dropped for being too long."""
    rows, dropped = [], []
    for r in records:
        msgs = data.prompt_messages(r.data)
        c = reward_ids(msgs, r.data["chosen"], layout, tokenizer)
        j = reward_ids(msgs, r.data["rejected"], layout, tokenizer)
        if len(c) > max_length or len(j) > max_length:
            dropped.append(str(r.data["id"]))
            continue
        rows.append({"chosen_ids": c, "rejected_ids": j})
    return rows, dropped


def accuracy(scorer: Any, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Share of pairs the reward model orders correctly (chosen above rejected), and the mean margin."""
    if not rows:
        return {"pairs": 0, "accuracy": None, "mean_margin": None}
    chosen = scorer.score_ids([r["chosen_ids"] for r in rows])
    rejected = scorer.score_ids([r["rejected_ids"] for r in rows])
    margins = [c - j for c, j in zip(chosen, rejected)]
    return {"pairs": len(rows), "accuracy": round(sum(m > 0 for m in margins) / len(rows), 4),
            "mean_margin": round(sum(margins) / len(rows), 4)}


def load_for_reward(spec: str):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = common.source_of(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load {spec!r} as a reward model from {source}: {str(e).splitlines()[0]}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok, source


def run_reward(job: RewardJob, recipe: common.Recipe, tuning: common.Tuning) -> dict[str, Any]:
    common.check_recipe(recipe)
    loaded = data.load(job.data, "prefs")
    loaded.raise_if_problems("nothing was trained (`alignkit data validate --kind prefs` lists them)")
    if job.eval_data:
        held = data.load(job.eval_data, "prefs")
        held.raise_if_problems("nothing was trained")
        train_recs, test_recs = loaded.records, held.records
    else:
        train_recs, test_recs = split(loaded.records, job.eval_share)
    if not train_recs:
        raise InputError(f"{job.data}: no training pairs left after holding out {job.eval_share:.0%}")
    output = common.prepare_output(job.output, job.resume, job.overwrite)
    model, tokenizer, source = load_for_reward(job.model)
    layout = reward_layout_for(tokenizer, job.layout, job.template)
    train_rows, too_long = tokenised_pairs(train_recs, layout, tokenizer, recipe.max_length)
    test_rows, test_long = tokenised_pairs(test_recs, layout, tokenizer, recipe.max_length)
    if too_long or test_long:
        common.say(f"alignkit train reward: {len(too_long) + len(test_long)} pair(s) longer than --max-length "
                   f"{recipe.max_length} left out: {', '.join((too_long + test_long)[:10])}"
                   + (" ..." if len(too_long) + len(test_long) > 10 else ""))
    if not train_rows:
        raise InputError(f"no training pair fits in --max-length {recipe.max_length}")
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**common.training_args_kwargs(recipe, tuning, output), max_length=recipe.max_length,
                        center_rewards_coefficient=job.center_rewards or None)
    trainer, progress, n_params = common.start_trainer(
        RewardTrainer, output, model=model, tuning=tuning, adapter=None, peft_task="SEQ_CLS", args=args,
        train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer)
    trained = trainer.model
    common.say(f"alignkit train reward: {len(train_rows)} pairs ({len(test_rows)} held out), layout {layout.name}, "
               f"{n_params:,} trainable parameters")
    trained.eval()
    scorer = RewardModelScorer(trained, tokenizer, layout, spec=f"reward:{output}")
    before = accuracy(scorer, test_rows) if not job.resume else None
    trained.train()
    seconds = common.run_training(trainer, job.resume)
    trained.eval()
    held = accuracy(scorer, test_rows)
    on_train = accuracy(scorer, train_rows[:256])

    info = {
        "kind": "reward",
        "alignkit_version": __version__,
        "base_model": job.model,
        "base_source": source,
        "layout": layout.to_dict(),
        # the base model's own generation layout is irrelevant for a scorer; kept for the shared model card code
        "format": {"name": layout.name, "template": layout.template},
        "inference": {},
        "data": {"path": job.data, "records": len(loaded.records), "hash": data.data_hash(loaded.records),
                 "eval_data": job.eval_data, "eval_share": None if job.eval_data else job.eval_share,
                 "train_pairs": len(train_rows), "held_out_pairs": len(test_rows),
                 "too_long": len(too_long) + len(test_long)},
        "tuning": asdict(tuning),
        "recipe": {**common.recipe_dict(recipe, tuning), "center_rewards": job.center_rewards},
        "result": common.result_dict(steps=trainer.state.global_step, seconds=seconds, history=progress.history,
                                     tokens=trainer.state.num_input_tokens_seen or 0, n_params=n_params,
                                     eval_accuracy=held["accuracy"], eval_margin=held["mean_margin"],
                                     eval_pairs=held["pairs"],
                                     eval_accuracy_before=before["accuracy"] if before else None,
                                     train_accuracy=on_train["accuracy"]),
    }
    common.write_outputs(output=output, model=trained, tokenizer=tokenizer, tuning=tuning, info=info,
                         base_spec=job.model)
    (output / "README.md").write_text(reward_card({**info, "output": str(output)}), encoding="utf-8")
    acc = held["accuracy"]
    common.say(f"alignkit train reward: wrote {output} (loss {info['result']['first_loss']} -> "
               f"{info['result']['final_loss']}, {seconds:.0f} s); held-out accuracy "
               + (f"{acc:.1%} on {held['pairs']} pairs (before training {before['accuracy']:.1%})"
                  if acc is not None and before and before["accuracy"] is not None
                  else f"{acc:.1%} on {held['pairs']} pairs" if acc is not None else "n/a (no held-out pairs)"))
    return info


def reward_card(info: dict[str, Any]) -> str:
    r = info["result"]
    t = info["tuning"]
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: " + ("transformers" if t["full"] else "peft"),
        "tags: [alignkit, reward-model" + ("" if t["full"] else ", lora") + "]",
        "---",
        "",
        f"# Reward model on {info['base_model']} (alignkit {info['alignkit_version']})",
        "",
        "A Bradley-Terry reward model (one score per answer; higher is better), trained with `alignkit train reward`"
        " on TRL's RewardTrainer.",
        "",
        f"- Use it: `--scorer reward:{info['output']}` (e.g. `alignkit data pairs --rank-by reward:{info['output']}`, "
        f"`alignkit generate --method best-of-n --scorer reward:{info['output']}`)",
        f"- Layout: `{info['layout']['name']}`" + (f" (template `{info['layout']['template']}`)"
                                                   if info["layout"].get("template") else ""),
        f"- Data: `{info['data']['path']}` — {info['data']['train_pairs']} training pairs, "
        f"{info['data']['held_out_pairs']} held out; sha256 prefix `{info['data']['hash']}`",
        f"- Held-out accuracy: {r['eval_accuracy']} (mean margin {r['eval_margin']}; before training "
        f"{r.get('eval_accuracy_before')})",
        f"- Tuning: {'full fine-tuning' if t['full'] else 'LoRA r=' + str(t['lora_r']) + ' + the score head'}",
        f"- Recipe: {', '.join(f'{k}={v}' for k, v in info['recipe'].items())}",
        f"- Result: {r['steps']} steps, {r['train_seconds']:.0f} s, final loss {r['final_loss']}",
        "",
    ]
    return "\n".join(lines)
