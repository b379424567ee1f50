"""Does ``alignkit train sft`` cost anything over calling TRL directly? The same data (the first N records of
the shipped SFT set, rendered in the tuned-k0 layout), the same settings (LoRA r=16 on all linear layers,
LIMA optimiser preset, batch size, steps, seed, length-grouped batches), on the embedded Gemma-3-270m:
once through alignkit's trainer, once through a hand-written TRL ``SFTTrainer`` call. Prints the training
tokens/s of each (tokens the model saw, excluding padding, over the trainer's own runtime) and the ratio,
plus wall-clock time including model loading. Target: alignkit within 5% of TRL.

    python bench/train_overhead.py [--records 24] [--steps 6] [--batch-size 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # bench/_results.py: docs/results/NAME.json


def direct_trl(source: str, records, steps: int, batch: int, out: Path) -> dict:
    """What a user would write with TRL and PEFT alone."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignkit.training.format import PromptFormat, render, tokenize

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    fmt = PromptFormat("urial", "tuned-k0")
    ds = Dataset.from_list([tokenize(render(r.data["messages"], fmt, tok), tok) for r in records])
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-4,
                     weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, lr_scheduler_type="linear",
                     logging_steps=1, save_strategy="no", seed=0, data_seed=0, report_to="none", bf16=False,
                     gradient_checkpointing=False, disable_tqdm=True, max_length=512,
                     include_num_input_tokens_seen="non_padding", train_sampling_strategy="group_by_length")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    return {"tokens": trainer.state.num_input_tokens_seen, "train_seconds": t2 - t1, "wall_seconds": t2 - t0}


def via_alignkit(spec: str, data_path: str, steps: int, batch: int, out: Path) -> dict:
    from alignkit.training.common import Recipe, Tuning
    from alignkit.training.sft import SFTJob, run_sft

    t0 = time.perf_counter()
    info = run_sft(SFTJob(data=data_path, output=str(out), model=spec, template="tuned-k0"),
                   Recipe(max_steps=steps, batch_size=batch, save_steps=10_000), Tuning())
    t2 = time.perf_counter()
    r = info["result"]
    return {"tokens": r["tokens"], "train_seconds": r["train_seconds"], "wall_seconds": t2 - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--records", type=int, default=24)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from alignkit.training import data
    from alignkit.training.common import source_of

    records = data.load("alignkit-sft", "sft").records[: args.records]
    source = source_of(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subset = tmp / "subset.jsonl"
        subset.write_text("".join(json.dumps(r.data) + "\n" for r in records))
        # alignkit first: the model files are then warm in the page cache for TRL, if anything favouring TRL
        ours = via_alignkit(args.model, str(subset), args.steps, args.batch_size, tmp / "ours")
        trl = direct_trl(source, records, args.steps, args.batch_size, tmp / "trl")
    for r in (ours, trl):
        r["tokens_per_second"] = r["tokens"] / r["train_seconds"]
    result = {
        "model": args.model, "records": len(records), "steps": args.steps, "batch_size": args.batch_size,
        "alignkit": ours, "trl_direct": trl,
        "same_tokens": ours["tokens"] == trl["tokens"],
        "ratio_tokens_per_second": ours["tokens_per_second"] / trl["tokens_per_second"],
        "ratio_wall": ours["wall_seconds"] / trl["wall_seconds"],
    }
    print(json.dumps(result, indent=2))
    print(f"alignkit {ours['tokens_per_second']:.1f} tok/s vs TRL direct {trl['tokens_per_second']:.1f} tok/s: "
          f"ratio {result['ratio_tokens_per_second']:.3f} (target >= 0.95); wall clock ratio {result['ratio_wall']:.3f}",
          file=sys.stderr)
    write_result("train_overhead", result, path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
