"""``alignkit train sft`` and ``alignkit train dpo``: tuning-based alignment on TRL and PEFT."""

from __future__ import annotations

import argparse

from alignkit.cli._config import add_dataclass_arguments, build, load_config_file


def add_parser(sub) -> None:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.dpo import DPOJob
    from alignkit.training.sft import SFTJob

    p = sub.add_parser("train", help="fine-tune a model: sft (LIMA-style) or dpo, LoRA by default",
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


def run_sft(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.sft import SFTJob, run_sft

    values = load_config_file(args.config, SFTJob, Tuning, Recipe)
    run_sft(build(SFTJob, args, values), build(Recipe, args, values), build(Tuning, args, values))
    return 0


def run_dpo(args: argparse.Namespace) -> int:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.dpo import DPOJob, run_dpo

    values = load_config_file(args.config, DPOJob, Tuning, Recipe)
    run_dpo(build(DPOJob, args, values), build(Recipe, args, values), build(Tuning, args, values))
    return 0
