"""Syntax check of generated code: Python's own parser, tree-sitter grammars for other languages.

A grammar is used when its PyPI package (tree-sitter-<language>, the tree-sitter organisation's own)
imports; a language without one is "unchecked", never rejected.
"""

from __future__ import annotations

import ast
import importlib
import warnings
from functools import cache

# language -> (module, function returning the grammar)
GRAMMARS = {"java": ("tree_sitter_java", "language"), "javascript": ("tree_sitter_javascript", "language"),
            "c": ("tree_sitter_c", "language"), "cpp": ("tree_sitter_cpp", "language"),
            "go": ("tree_sitter_go", "language"), "rust": ("tree_sitter_rust", "language"),
            "typescript": ("tree_sitter_typescript", "language_typescript"),
            "csharp": ("tree_sitter_c_sharp", "language"), "shell": ("tree_sitter_bash", "language"),
            "ruby": ("tree_sitter_ruby", "language"), "php": ("tree_sitter_php", "language_php")}


@cache
def _parser(language: str):
    spec = GRAMMARS.get(language)
    if spec is None:
        return None
    try:
        import tree_sitter

        grammar = getattr(importlib.import_module(spec[0]), spec[1])()
        return tree_sitter.Parser(tree_sitter.Language(grammar))
    except (ImportError, AttributeError):
        return None


def checkable(language: str) -> bool:
    return language in ("python", "jupyter") or _parser(language) is not None


def syntax_ok(code: str, language: str) -> bool | None:
    """True/False when a parser for ``language`` is at hand, None when none is."""
    if language in ("python", "jupyter"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences etc. are warnings, not errors
                ast.parse(code)
            return True
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    parser = _parser(language)
    if parser is None:
        return None
    return not parser.parse(code.encode("utf-8", "replace")).root_node.has_error
