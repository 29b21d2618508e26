"""YAML as peftbench reads it (suite files, ``--set`` values): safe, no duplicate keys, bounded nesting.

Usage:
    raw = load(text)          # yaml.YAMLError (with a line number) for a duplicate key or deep nesting

PyYAML's safe loader lets the last of two equal keys win in silence (``max_steps: 3`` then
``max_steps: 5`` trains 5 steps), and composes nested collections by recursion, so a file nested
tens of thousands of levels deep ends in ``RecursionError``. Both become one-line errors here.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 64  # nested collections; a suite needs about 5 (suite > experiments > item > section > option)
MERGE_TAG = "tag:yaml.org,2002:merge"


class Refused(yaml.MarkedYAMLError):
    """A document that YAML itself would accept but a suite must not be: a duplicate key, deep nesting."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and nesting past ``MAX_DEPTH``."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:  # `<<: *defaults` merges; keys beside it override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise Refused(
                            None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                        )
                    seen[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: the safe constructor says so itself
                    pass
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def describe(error: yaml.YAMLError) -> str:
    """``line N: what is wrong`` for a YAML error (PyYAML's own message spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark else ""
    return f"{where}{getattr(error, 'problem', None) or error}"
