"""Language of a file from its extension or name: The Stack's table, cut to what phase 1 trains on.

Phase 1 covers 18 languages (docs/recipe.md) plus the Markdown/JSON/YAML the StarCoder2 filters treat as
data formats; a few neighbours (HTML, CSS, XML, text) are known so that a config can opt into them.
"""

from __future__ import annotations

from pathlib import PurePath

# language -> (extensions, exact file names); names match the recipe's list, lower-cased
LANGUAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "python": ((".py", ".pyw", ".pyi"), ()),
    "java": ((".java",), ()),
    "cpp": ((".cpp", ".cc", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp"), ()),
    "c": ((".c", ".h"), ()),  # The Stack counts .h as C
    "javascript": ((".js", ".mjs", ".cjs", ".jsx"), ()),
    "php": ((".php", ".phtml"), ()),
    "csharp": ((".cs",), ()),
    "go": ((".go",), ()),
    "typescript": ((".ts", ".tsx", ".mts", ".cts"), ()),
    "sql": ((".sql",), ()),
    "ruby": ((".rb", ".rake", ".gemspec"), ("Rakefile", "Gemfile")),
    "rust": ((".rs",), ()),
    "jupyter": ((".ipynb",), ()),
    "scala": ((".scala", ".sc"), ()),
    "kotlin": ((".kt", ".kts"), ()),
    "shell": ((".sh", ".bash", ".zsh", ".ksh"), ()),
    "dart": ((".dart",), ()),
    "swift": ((".swift",), ()),
    "markdown": ((".md", ".markdown", ".mdx"), ()),
    "json": ((".json", ".jsonl", ".geojson"), ()),
    "yaml": ((".yml", ".yaml"), ()),
    "html": ((".html", ".htm"), ()),
    "css": ((".css", ".scss", ".less"), ()),
    "xml": ((".xml", ".xsd", ".xsl"), ()),
    "text": ((".txt", ".text"), ()),
}
PAPER_LANGUAGES = ("python", "java", "cpp", "c", "javascript", "php", "csharp", "go", "typescript", "sql", "ruby",
                   "rust", "jupyter", "scala", "kotlin", "shell", "dart", "swift")
DEFAULT_LANGUAGES = (*PAPER_LANGUAGES, "markdown", "json", "yaml")

_BY_EXT = {ext: lang for lang, (exts, _) in LANGUAGES.items() for ext in exts}
_BY_NAME = {name: lang for lang, (_, names) in LANGUAGES.items() for name in names}
# common spellings found in datasets' language fields (The Stack v2 uses "C++", "C#", "Jupyter Notebook", ...)
_ALIASES = {"c++": "cpp", "c#": "csharp", "jupyter notebook": "jupyter", "ipython notebook": "jupyter",
            "bash": "shell", "js": "javascript", "ts": "typescript", "yml": "yaml", "md": "markdown"}


def language_of(path: str) -> str | None:
    """Language for a path, or None when the table does not know it."""
    p = PurePath(path)
    if p.name in _BY_NAME:
        return _BY_NAME[p.name]
    return _BY_EXT.get(p.suffix.lower())


def normalize_language(name: str) -> str | None:
    """Map a dataset's language label ("C++", "Jupyter Notebook") to this table's name."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in LANGUAGES else None
