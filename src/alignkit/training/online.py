"""Online RL on TRL with a scorer as the reward: GRPO (group-relative advantages) and RLOO (leave-one-out
baseline). The policy samples ``--num-generations`` answers per prompt in the layout it is trained in; each
answer is cut at the layout's end (the closing fence of the urial layout) and rated by any alignkit scorer
(``reward:PATH``, ``judge:MODEL``, ``geval:MODEL``). An answer the scorer cannot rate gets no reward (TRL
ignores it), never a made-up one.

On a CPU this runs on tiny models (the tests) and, slowly, on the embedded base. On GPUs, TRL's generation
backends (vLLM) and DeepSpeed/FSDP configs are passed through by ``accelerate launch``; see docs/guides/scale-out.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from alignkit.errors import InputError
from alignkit.records import parse_records
from alignkit.scoring import parse_spec, score_records
from alignkit.training import common
from alignkit.training.dpo import Start, resolve_format
from alignkit.training.format import check_format, render_urial, urial_preamble
from alignkit.version import __version__


@dataclass(frozen=True)
class OnlineJob(Start):
    data: str = field(default="", metadata={  # prompts, not preference pairs (the field keeps its place)
        "help": "prompts: a JSONL file of {id, prompt or messages ending with a user turn}", "required": True})
    scorer: str = field(default="", metadata={
        "help": "the reward: reward:PATH_OR_HUB, judge:MODEL or geval:MODEL", "required": True})
    num_generations: int = field(default=4, metadata={"min": 2, "help": "answers sampled per prompt (the group)"})
    max_completion_length: int = field(default=128, metadata={"min": 1, "help": "most tokens per sampled answer"})
    temperature: float = field(default=0.8, metadata={"gt": 0, "help": "sampling temperature of the policy"})
    beta: float = field(default=0.0, metadata={"min": 0,
        "help": "KL coefficient to the reference (the starting model); 0 (TRL's default for GRPO) skips the reference"})
    use_vllm: bool = field(default=False, metadata={
        "help": "GPU: sample with vLLM inside the training process (TRL's use_vllm, colocate mode); needs vLLM's "
                "CUDA build -- not run on this CPU machine"})


def prompt_rows(records: list[dict[str, Any]], fmt: Any) -> list[dict[str, Any]]:
    """TRL rows: the rendered prompt (urial layout: preamble and an opened answer block) or the conversation
    (chat templates), plus the original request for the scorer."""
    preamble = urial_preamble(fmt.template) if fmt.name == "urial" else ""
    rows = []
    for r in records:
        msgs = [{"role": "user", "content": r["prompt"]}] if "prompt" in r else list(r["messages"])
        if fmt.name == "chat-template":
            rows.append({"prompt": msgs, "request": msgs[-1]["content"]})
        else:
            rendered, fence = render_urial(msgs, preamble, open_answer=True)
            rows.append({"prompt": rendered.text, "request": msgs[-1]["content"], "fence": fence})
    return rows


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def make_reward(scorer: Any, log: list[dict[str, Any]] | None = None):
    """A TRL reward function: the scorer's score of each sampled answer (None when it cannot rate one)."""
    def reward(prompts, completions, request=None, fence=None, **kwargs):
        answers = []
        for i, c in enumerate(completions):
            text = _text(c)
            end = fence[i] if fence else None
            if end and end in text:
                text = text[: text.index(end)]
            answers.append(text.strip())
        scores = score_records(scorer, list(zip(request, answers)))
        if log is not None:
            log.extend({"request": q, "answer": a, **s.to_dict()} for q, a, s in zip(request, answers, scores))
        return [s.value for s in scores]

    reward.__name__ = f"scorer:{scorer.spec}"
    return reward


def _hash(records: list[dict[str, Any]]) -> str:
    import hashlib
    import json

    payload = json.dumps(records, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def config_kwargs(job: OnlineJob, recipe: common.Recipe, tuning: common.Tuning, output: Any) -> dict[str, Any]:
    """The GRPO/RLOO config: the shared training arguments plus the sampling settings (and vLLM on GPUs)."""
    kwargs = {**common.training_args_kwargs(recipe, tuning, output), "num_generations": job.num_generations,
              "max_completion_length": job.max_completion_length, "temperature": job.temperature,
              "beta": job.beta}
    kwargs.pop("include_num_input_tokens_seen", None)
    if job.use_vllm:
        kwargs.update(use_vllm=True, vllm_mode="colocate")
    return kwargs


def run_online(job: OnlineJob, recipe: common.Recipe, tuning: common.Tuning, algorithm: str = "grpo", *,
               open_scorer: Any) -> dict[str, Any]:
    """Online RL with ``open_scorer(spec)`` (e.g. :func:`alignkit.api.open_scorer`) as the reward's source."""
    if algorithm not in ("grpo", "rloo"):
        raise InputError(f"unknown online algorithm {algorithm!r}; choose grpo or rloo")
    common.check_recipe(recipe)
    parse_spec(job.scorer)
    if job.adapter and tuning.full:
        raise InputError("--full trains all weights; it cannot start from --adapter")
    records = [r for _, r in parse_records(job.data, "stop")]
    if not records:
        raise InputError(f"{job.data}: no prompts")
    per_step = recipe.batch_size * recipe.grad_accum
    if per_step % job.num_generations:
        raise InputError(f"--batch-size x --grad-accum ({per_step}) must be a multiple of --num-generations "
                         f"({job.num_generations}): each optimiser step takes whole groups")
    output = common.prepare_output(job.output, job.resume, job.overwrite)
    scorer = open_scorer(job.scorer)
    model, tokenizer, source = common.load_for_training(job.model, adapter=job.adapter, trainable_adapter=True)
    fmt = resolve_format(job, tokenizer)
    check_format(fmt, tokenizer)
    from datasets import Dataset

    dataset = Dataset.from_list(prompt_rows(records, fmt))
    samples: list[dict[str, Any]] = []
    kwargs = config_kwargs(job, recipe, tuning, output)
    if algorithm == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    args = Config(**kwargs)
    trainer, progress, n_params = common.start_trainer(Trainer, output, model=model, tuning=tuning,
                                                       adapter=job.adapter, reward_funcs=make_reward(scorer, samples),
                                                       args=args, train_dataset=dataset, processing_class=tokenizer)
    trained = trainer.model
    common.say(f"alignkit train {algorithm}: {len(records)} prompts x {job.num_generations} samples, format {fmt.name}, "
               f"reward {scorer.spec} ({n_params:,} trainable parameters)")
    seconds = common.run_training(trainer, job.resume)

    rewards = [h.get("reward") for h in progress.history if isinstance(h.get("reward"), (int, float))]
    info = {
        "kind": algorithm,
        "alignkit_version": __version__,
        "base_model": job.model,
        "base_source": source,
        "init_adapter": job.adapter,
        "scorer": scorer.info(),
        "num_generations": job.num_generations,
        "beta": job.beta,
        "loss_type": algorithm,
        "reference": "the starting model" if job.beta > 0 else "none (beta 0)",
        "format": {"name": fmt.name, "template": fmt.template},
        "inference": fmt.method_options(),
        "data": {"path": job.data, "records": len(records), "hash": _hash(records)},
        "tuning": asdict(tuning),
        "recipe": common.recipe_dict(recipe, tuning),
        "result": common.result_dict(steps=trainer.state.global_step, seconds=seconds, history=progress.history,
                                     tokens=0, n_params=n_params, first_reward=rewards[0] if rewards else None,
                                     final_reward=rewards[-1] if rewards else None,
                                     unrated_samples=sum(1 for s in samples if s["score"] is None),
                                     samples=len(samples)),
    }
    common.write_outputs(output=output, model=trained, tokenizer=tokenizer, tuning=tuning, info=info,
                         base_spec=job.model)
    import json

    with (output / "samples.jsonl").open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
    common.say(f"alignkit train {algorithm}: wrote {output} (mean reward {info['result']['first_reward']} -> "
               f"{info['result']['final_reward']}, {seconds:.0f} s; every sample and its score in samples.jsonl)")
    return info
