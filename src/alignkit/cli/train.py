"""``alignkit train sft`` and ``alignkit train dpo``: tuning-based alignment on TRL and PEFT."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from alignkit.cli._config import add_dataclass_arguments, build, load_config_file


@dataclass(frozen=True)
class AlignerWarmup:
    warmup_epochs: float = field(default=1.0, metadata={
        "min": 0, "help": "epochs of identity corrections first ((question, good answer) -> the same answer), so "
                          "the corrector learns to keep what is already good; 0 skips the warm-up"})


def add_parser(sub) -> None:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.dpo import DPOJob
    from alignkit.training.reward import RewardJob
    from alignkit.training.sft import SFTJob

    p = sub.add_parser("train", help="fine-tune a model: sft (LIMA-style), dpo, kto, orpo, simpo, grpo, reward models, bpo, aligner; LoRA by default",
                       description="Tuning-based alignment on TRL and PEFT. The output folder loads everywhere a "
                       "model does (`--adapter DIR`, or DIR itself as the model spec) and carries a model card "
                       "(README.md), alignkit.json (data hash, recipe, base model, prompt layout) and the loss log.")
    s = p.add_subparsers(dest="train_command", metavar="COMMAND", required=True)
    sft = s.add_parser("sft", help="supervised fine-tuning on conversations (loss on assistant turns only)",
                       description="Supervised fine-tuning with the LIMA preset (AdamW, weight decay 0.1, linear "
                       "decay, no warm-up). Multi-turn conversations train every assistant turn. Resumable: "
                       "checkpoints go to OUTPUT/checkpoints; --resume continues the last one.")
    sft.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(sft, SFTJob)
    add_dataclass_arguments(sft, Tuning, group="what is trained")
    add_dataclass_arguments(sft, Recipe, group="recipe (LIMA preset)")
    sft.set_defaults(func=run_sft)
    dpo = s.add_parser("dpo", help="direct preference optimisation on chosen/rejected pairs",
                       description="DPO with LoRA: the reference is the frozen starting point (the base with the "
                       "adapter off, or a frozen copy of --adapter), never a second copy of the model.")
    dpo.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(dpo, DPOJob)
    add_dataclass_arguments(dpo, Tuning, group="what is trained")
    add_dataclass_arguments(dpo, Recipe, group="recipe (LIMA preset)")
    dpo.set_defaults(func=run_dpo)
    from alignkit.training.dpo import FamilyJob

    for kind, what in (("kto", "KTO: unpaired desirable/undesirable examples (each pair gives one of each), "
                                "tied to a reference"),
                       ("orpo", "ORPO: the SFT loss plus an odds-ratio preference term, reference-free"),
                       ("simpo", "SimPO: a length-normalised reward margin, reference-free (TRL's CPO trainer)")):
        fp = s.add_parser(kind, help=what.split(":")[0] + " on chosen/rejected pairs",
                          description=what + ". Same data, output folder and model card as `train dpo`.")
        fp.add_argument("--config", help="YAML file of options (flags override it)")
        add_dataclass_arguments(fp, FamilyJob)
        add_dataclass_arguments(fp, Tuning, group="what is trained")
        add_dataclass_arguments(fp, Recipe, group="recipe (LIMA preset)")
        fp.set_defaults(func=run_family, kind=kind)
    from alignkit.training.online import OnlineJob

    for algo, what in (("grpo", "GRPO: online RL, group-relative advantages over the sampled answers of each prompt"),
                       ("rloo", "RLOO: online RL, a leave-one-out baseline over the sampled answers of each prompt")):
        op = s.add_parser(algo, help=what.split(":")[0] + " with a scorer as the reward (online RL)",
                          description=what + "; the reward is any scorer (--scorer reward:PATH, judge:MODEL, "
                          "geval:MODEL). Every sample and its score are kept in OUTPUT/samples.jsonl.")
        op.add_argument("--config", help="YAML file of options (flags override it)")
        add_dataclass_arguments(op, OnlineJob)
        add_dataclass_arguments(op, Tuning, group="what is trained")
        add_dataclass_arguments(op, Recipe, group="recipe (LIMA preset)")
        op.set_defaults(func=run_online, algorithm=algo)
    rm = s.add_parser("reward", help="train a reward model (Bradley-Terry on chosen/rejected pairs) to use as a scorer",
                      description="A reward model on TRL's RewardTrainer: a score head on the base model, LoRA by "
                      "default. Reports the accuracy on held-out pairs (before and after training). The output "
                      "folder is a scorer: --scorer reward:OUTPUT (best-of-n, data pairs --rank-by, dera sweep).")
    rm.add_argument("--config", help="YAML file of options (flags override it)")
    add_dataclass_arguments(rm, RewardJob)
    add_dataclass_arguments(rm, Tuning, group="what is trained")
    add_dataclass_arguments(rm, Recipe, group="recipe (LIMA preset)")
    rm.set_defaults(func=run_reward)
    for stage, what, data_help in (
        ("bpo", "a BPO prompt rewriter: (request -> improved request) pairs from `alignkit data bpo-pairs`",
         "JSONL of {id, prompt, improved_prompt} (alignkit data bpo-pairs)"),
        ("aligner", "an Aligner answer corrector: (question, answer -> correction) triples from `alignkit data "
         "aligner-triples`, after an identity warm-up", "JSONL of {id, question, answer, correction}")):
        sp = s.add_parser(stage, help=f"train {what.split(':')[0]}",
                          description=f"Train {what}. SFT with LoRA on the stage's layout; the output folder "
                          f"is a model that prompts itself in that layout, e.g. `--{'rewriter' if stage == 'bpo' else 'corrector'} "
                          f"OUTPUT` on any command.")
        sp.add_argument("--config", help="YAML file of options (flags override it)")
        add_dataclass_arguments(sp, SFTJob)
        if stage == "aligner":
            add_dataclass_arguments(sp, AlignerWarmup, group="identity warm-up")
        add_dataclass_arguments(sp, Tuning, group="what is trained")
        add_dataclass_arguments(sp, Recipe, group="recipe (LIMA preset)")
        for action in sp._actions:
            if action.dest == "data":
                action.help = data_help + " (required)"
        sp.set_defaults(func=run_stage, stage=stage)


def run_sft(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.sft import SFTJob, run_sft

    values = load_config_file(args.config, SFTJob, Tuning, Recipe)
    run_sft(build(SFTJob, args, values), build(Recipe, args, values), build(Tuning, args, values))
    return 0


def run_stage(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.routes import train_stage
    from alignkit.training.sft import SFTJob

    extra = (AlignerWarmup,) if args.stage == "aligner" else ()
    values = load_config_file(args.config, SFTJob, Tuning, Recipe, *extra)
    warmup = build(AlignerWarmup, args, values).warmup_epochs if extra else 0.0
    train_stage(args.stage, build(SFTJob, args, values), build(Recipe, args, values), build(Tuning, args, values),
                warmup_epochs=warmup)
    return 0


def run_dpo(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.dpo import DPOJob, run_dpo

    values = load_config_file(args.config, DPOJob, Tuning, Recipe)
    run_dpo(build(DPOJob, args, values), build(Recipe, args, values), build(Tuning, args, values))
    return 0


def run_reward(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.reward import RewardJob, run_reward

    values = load_config_file(args.config, RewardJob, Tuning, Recipe)
    run_reward(build(RewardJob, args, values), build(Recipe, args, values), build(Tuning, args, values))
    return 0


def run_family(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.dpo import FamilyJob, run_preference

    values = load_config_file(args.config, FamilyJob, Tuning, Recipe)
    run_preference(build(FamilyJob, args, values), build(Recipe, args, values), build(Tuning, args, values), args.kind)
    return 0


def run_online(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.online import OnlineJob, run_online

    values = load_config_file(args.config, OnlineJob, Tuning, Recipe)
    run_online(build(OnlineJob, args, values), build(Recipe, args, values), build(Tuning, args, values), args.algorithm)
    return 0
