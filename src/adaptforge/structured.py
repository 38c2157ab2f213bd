"""JSON and YAML a user gives, parsed into a value or one error naming the file and line.

Two inputs break the standard parsers in ways no message covers: JSON nested a few thousand deep exhausts
Python's stack (``RecursionError``), and YAML aliases let an 11-line file expand to billions of nodes (the
"billion laughs"). Specs, recipes, task files and adapter configs never need either: YAML aliases and YAML
nested deeper than :data:`MAX_DEPTH` are refused, and JSON too deep to parse names the line where it passed
:data:`MAX_DEPTH`.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from adaptforge.errors import AdaptforgeError

MAX_DEPTH = 100  # levels of nesting: far beyond any config, far below the parsers' stack limits


def parse_json(
    text: str, where: str, error: type[AdaptforgeError] = AdaptforgeError, first_line: int = 1, expected: str = ""
) -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ``error`` as ``WHERE: line N: ...``
    (``first_line`` is the line ``text`` starts on, for one line of a JSONL file; ``expected`` ends the message
    of invalid JSON with what was expected)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        hint = f"; expected {expected}" if expected else ""
        line = first_line + exc.lineno - 1
        raise error(f"{where}: line {line}: invalid JSON ({exc.msg}, column {exc.colno}){hint}") from None
    except RecursionError:
        line = first_line + (_too_deep(text) or 1) - 1
        raise error(
            f"{where}: line {line}: JSON nested more than {MAX_DEPTH} levels deep (and deeper than the parser can "
            "follow); no adaptforge input needs that"
        ) from None


def _too_deep(text: str) -> int | None:
    """The 1-based line where ``text``'s brackets first nest deeper than :data:`MAX_DEPTH`, outside strings."""
    depth, line, in_string, escaped = 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif ch in "]}":
            depth -= 1
    return None


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses an alias (``*name``) where it meets it, before it is expanded."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"alias *{event.anchor} refused: YAML anchors and aliases are not allowed here (a few aliases can "
                "expand to billions of values); write the values out",
                event.start_mark,
            )
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth = depth


def parse_yaml(text: str, where: str, error: type[AdaptforgeError] = AdaptforgeError) -> tuple[Any, yaml.Node | None]:
    """The value of a one-document YAML ``text`` and its node tree (for line numbers); invalid YAML, an alias or
    nesting deeper than :data:`MAX_DEPTH` raises ``error`` naming ``where`` and the line."""
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        raise error(f"{where}:{line} invalid YAML ({getattr(err, 'problem', None) or err})") from None
    finally:
        loader.dispose()


__all__ = ["MAX_DEPTH", "parse_json", "parse_yaml"]
