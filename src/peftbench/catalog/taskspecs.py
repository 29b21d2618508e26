"""What each task is, declared once and importable without torch (the report reads it too).

Usage:
    spec = SPECS["classification"]
    spec.fields, spec.metrics, spec.primary, spec.label_field, spec.blocks, spec.generates

``tasks.py`` attaches the behaviour (how records become tokens, how quality is scored); everything
else (data loading, validation, the runner, the report) asks these declarations instead of
comparing task names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fields: tuple[str, ...]  # canonical record fields
    metrics: tuple[str, ...]  # headline quality metrics, in report order
    primary: str  # the metric a sweep selects on and the report leads with
    lower_is_better: frozenset[str] = frozenset()
    label_field: str | None = None  # classes to stratify samples by, name and score against a majority baseline
    blocks: bool = False  # examples are fixed-length token blocks cut from the texts: caps count blocks
    generates: bool = False  # quality is scored on generated text (greedy settings recorded)
    target_in_input: bool = False  # a causal LM sees source and target in one sequence


SPECS: dict[str, TaskSpec] = {
    s.name: s
    for s in [
        TaskSpec(
            "summarization",
            ("source", "target"),
            ("rouge1", "rouge2", "rougeL", "bleu"),
            "rougeL",
            generates=True,
            target_in_input=True,
        ),
        TaskSpec("classification", ("text", "label"), ("accuracy", "macro_f1"), "accuracy", label_field="label"),
        TaskSpec(
            "language-modeling",
            ("text",),
            ("perplexity",),
            "perplexity",
            lower_is_better=frozenset({"perplexity"}),
            blocks=True,
        ),
    ]
}
