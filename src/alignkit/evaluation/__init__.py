"""Evaluation: judge-free metrics now; LLM judges and the instruction set arrive with the evaluation issue."""
