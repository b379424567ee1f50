"""Evaluation: every route on one footing.

- ``harness`` -- ``alignkit eval`` / ``ak.evaluate``: contestants answer an instruction set (resumable), a judge
  scores them, the report is written; ``result.EvalReport`` is what the API returns.
- ``judge`` (rubrics, local or API judges, structured replies, retries, cache) · ``parse`` (reading a verdict) ·
  ``weighted`` (G-Eval-style probability-weighted scores, weighted pairwise preferences, length control).
- ``cheap`` -- the judge-free metrics of every answer (self-stop, leaks, repetition, refusals);
  ``refusal_classifier`` the refusal detector they use, ``refusal`` its measurement on labelled answers.
- ``data`` -- instruction sets (alignkit-eval, just-eval, AlpacaEval, MT-bench, XSTest) and their tags.
- ``scorers`` -- judges as scorers (best-of-N, ranked pairs, the DeRa sweep); ``report`` -- Markdown, HTML, JSON.

The guide: docs/guides/evaluate.md.
"""
