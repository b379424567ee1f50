"""Tuning-based alignment, thin on TRL and PEFT: supervised fine-tuning (LIMA-style), DPO, and the data tools
that feed them (validation, cleaning, diversity selection, synthesis).

Nothing here imports torch, transformers or TRL at module import time; the trainers import them when run.
"""
