"""Language of a file from its extension or name: The Stack's table, cut to what phase 1 trains on.

Phase 1 covers 18 languages (docs/recipe.md) plus the Markdown/JSON/YAML the StarCoder2 filters treat as
data formats; a few neighbours (HTML, CSS, XML, text) are known so that a config can opt into them.
``language_tokens`` reads the language mix a token source records (the curriculum's language shares).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arctic_pretrain.data.shards import Manifest

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


def language_tokens(manifest: Manifest) -> dict[str, int] | None:
    """A token source's tokens per language, as its writer recorded them (None: not recorded).

    ``metadata.language_tokens`` (a source of mixed languages, e.g. synthesis), ``metadata.language`` (a
    phase-1 source of one language), or shards named ``<language>-...`` (the annotator's selection, written
    by ``GroupAndTokenize(merge_languages=True)``; its ``python/`` part)."""
    meta = manifest.metadata
    if isinstance(meta.get("language_tokens"), dict):
        return {lang: int(n) for lang, n in meta["language_tokens"].items()}
    if isinstance(meta.get("language"), str):
        return {meta["language"]: manifest.tokens}
    prefixes = [s.name.split("-", 1)[0] for s in manifest.shards]
    if prefixes and all(p in LANGUAGES for p in prefixes):
        out: dict[str, int] = {}
        for lang, shard in zip(prefixes, manifest.shards, strict=True):
            out[lang] = out.get(lang, 0) + shard.tokens
        return out
    return None
