"""``alignkit train ...``: tuning-based alignment on TRL and PEFT -- SFT, the DPO family (DPO, KTO, ORPO,
SimPO), reward models, online RL (GRPO, RLOO) and the route stages (BPO rewriter, Aligner corrector)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from alignkit.api import open_scorer
from alignkit.cli._config import add_dataclass_arguments, build, load_config_file
from alignkit.errors import InputError
from alignkit.training.common import RECIPES, Recipe, Tuning
from alignkit.training.dpo import DPOJob, FamilyJob, run_preference
from alignkit.training.online import OnlineJob, run_online
from alignkit.training.reward import RewardJob, run_reward
from alignkit.training.routes import train_stage
from alignkit.training.sft import SFTJob, run_sft


@dataclass(frozen=True)
class AlignerWarmup:
    warmup_epochs: float = field(default=1.0, metadata={
        "min": 0, "help": "epochs of identity corrections first ((question, good answer) -> the same answer), so "
                          "the corrector learns to keep what is already good; 0 skips the warm-up"})


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model: sft (LIMA-style), dpo, kto, orpo, simpo, grpo, rloo, "
                       "reward models, bpo, aligner; LoRA by default",
                       description="Tuning-based alignment on TRL and PEFT. The output folder loads everywhere a "
                       "model does (`--adapter DIR`, or DIR itself as the model spec) and carries a model card "
                       "(README.md), alignkit.json (data hash, recipe, base model, prompt layout) and the loss log.")
    s = p.add_subparsers(dest="train_command", metavar="COMMAND", required=True)

    def command(name: str, helptext: str, description: str, job, runner: str, *, extra=(), helps=None, **defaults):
        """One ``train`` subcommand: its job's options, then what is trained and the recipe."""
        sp = s.add_parser(name, help=helptext, description=description)
        sp.add_argument("--config", help="YAML file of options (flags override it)")
        add_dataclass_arguments(sp, job, helps=helps)
        for cls, group in extra:
            add_dataclass_arguments(sp, cls, group=group)
        add_dataclass_arguments(sp, Tuning, group="what is trained")
        add_dataclass_arguments(sp, Recipe, group="recipe (defaults: LIMA's optimiser; sft --recipe lima: LIMA's "
                                                  "whole recipe)")
        sp.set_defaults(func=_run, _job=job, _extra=tuple(c for c, _ in extra), _runner=runner, **defaults)
        return sp

    command("sft", "supervised fine-tuning on conversations (loss on assistant turns only)",
            "Supervised fine-tuning. Default recipe: LIMA's optimiser (AdamW, weight decay 0.1, linear decay, no "
            "warm-up) on a short CPU schedule with LoRA; --recipe lima: LIMA's whole recipe (15 epochs, full "
            "fine-tuning, lr 1e-5 -> 1e-6, batch 64, 2048 tokens, residual dropout, dev-set checkpoint choice). "
            "Multi-turn conversations train every assistant turn. Resumable: checkpoints go to OUTPUT/checkpoints; "
            "--resume continues the last one.", SFTJob, "sft")
    command("dpo", "direct preference optimisation on chosen/rejected pairs",
            "DPO with LoRA: the reference is the frozen starting point (the base with the adapter off, or a frozen "
            "copy of --adapter), never a second copy of the model. --loss-type takes every loss TRL's DPOTrainer "
            "offers.", DPOJob, "preference", kind="dpo")
    for kind, what in (("kto", "KTO: unpaired desirable/undesirable examples (each pair gives one of each), "
                               "tied to a reference"),
                       ("orpo", "ORPO: the SFT loss plus an odds-ratio preference term, reference-free"),
                       ("simpo", "SimPO: a length-normalised reward margin, reference-free (TRL's CPO trainer)")):
        command(kind, what.split(":")[0] + " on chosen/rejected pairs",
                what + ". Same data, output folder and model card as `train dpo`.", FamilyJob, "preference",
                kind=kind)
    for algo, what in (("grpo", "GRPO: online RL, group-relative advantages over the sampled answers of each prompt"),
                       ("rloo", "RLOO: online RL, a leave-one-out baseline over the sampled answers of each prompt")):
        command(algo, what.split(":")[0] + " with a scorer as the reward (online RL)",
                what + "; the reward is any scorer (--scorer reward:PATH, judge:MODEL, geval:MODEL). Every sample "
                "and its score are kept in OUTPUT/samples.jsonl.", OnlineJob, "online", algorithm=algo)
    command("reward", "train a reward model (Bradley-Terry on chosen/rejected pairs) to use as a scorer",
            "A reward model on TRL's RewardTrainer: a score head on the base model, LoRA by default. Reports the "
            "accuracy on held-out pairs (before and after training). The output folder is a scorer: --scorer "
            "reward:OUTPUT (best-of-n, data pairs --rank-by, dera sweep).", RewardJob, "reward")
    for stage, what, data_help in (
        ("bpo", "a BPO prompt rewriter: (request -> improved request) pairs from `alignkit data bpo-pairs`",
         "JSONL of {id, prompt, improved_prompt} (alignkit data bpo-pairs)"),
        ("aligner", "an Aligner answer corrector: (question, answer -> correction) triples from `alignkit data "
         "aligner-triples`, after an identity warm-up", "JSONL of {id, question, answer, correction}")):
        flag = "rewriter" if stage == "bpo" else "corrector"
        command(stage, f"train {what.split(':')[0]}",
                     f"Train {what}. SFT with LoRA on the stage's layout; the output folder is a model that prompts "
                     f"itself in that layout, e.g. `--{flag} OUTPUT` on any command.", SFTJob, "stage",
                     extra=((AlignerWarmup, "identity warm-up"),) if stage == "aligner" else (), stage=stage,
                     helps={"data": data_help})


def _run(args: argparse.Namespace) -> int:
    values = load_config_file(args.config, args._job, Tuning, Recipe, *args._extra)
    preset = getattr(args, "recipe", values.get("recipe", "lima-optimiser"))
    if preset not in RECIPES:
        raise InputError(f"--recipe must be one of {', '.join(RECIPES)}, got {preset!r}")
    values = {**RECIPES[preset], **values}  # the preset under the config file, the flags over both
    job, recipe, tuning = build(args._job, args, values), build(Recipe, args, values), build(Tuning, args, values)
    if args._runner == "sft":
        run_sft(job, recipe, tuning)
    elif args._runner == "preference":
        run_preference(job, recipe, tuning, args.kind)
    elif args._runner == "online":
        run_online(job, recipe, tuning, args.algorithm, open_scorer=open_scorer)
    elif args._runner == "reward":
        run_reward(job, recipe, tuning)
    else:
        warmup = build(AlignerWarmup, args, values).warmup_epochs if args._extra else 0.0
        train_stage(args.stage, job, recipe, tuning, warmup_epochs=warmup)
    return 0
