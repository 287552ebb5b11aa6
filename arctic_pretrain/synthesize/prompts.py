"""Prompt templates (Jinja2 files under conf/synthesize/templates/) and the messages they make.

A template's first line names how its replies are parsed: ``{#- format: sections -#}`` (OSS-Instruct's
``[Problem Description]`` + ``[Solution]``) or ``{#- format: code -#}`` (one fenced code file). Its
variables: ``snippet`` (the seed window), ``language`` (display name), ``fence`` (the code fence tag).
Every generation records the template's name and SHA-256, so outputs stay traceable to their prompt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.synthesize.config import PromptConfig, template_path

FORMATS = ("sections", "code")
DISPLAY = {"python": "Python", "java": "Java", "cpp": "C++", "c": "C", "javascript": "JavaScript", "php": "PHP",
           "csharp": "C#", "go": "Go", "typescript": "TypeScript", "sql": "SQL", "ruby": "Ruby", "rust": "Rust",
           "jupyter": "Python (Jupyter notebook as a script)", "scala": "Scala", "kotlin": "Kotlin",
           "shell": "Shell", "dart": "Dart", "swift": "Swift"}
FENCE = {"cpp": "cpp", "csharp": "csharp", "jupyter": "python", "shell": "bash"}


@dataclass
class PromptTemplate:
    name: str
    format: str
    sha256: str
    system: str
    _template: object
    _prefill: object = None

    @classmethod
    def load(cls, cfg: PromptConfig) -> PromptTemplate:
        import jinja2

        path = template_path(cfg.template)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"prompt.template={cfg.template!r}: cannot read {path} ({err})") from None
        m = re.match(r"\{#-?\s*format:\s*(\w+)", text)
        if not m or m.group(1) not in FORMATS:
            raise ConfigError(f"prompt.template={cfg.template!r}: {path} must start with "
                              f"'{{#- format: sections|code -#}}' (how its replies are parsed)")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            template = env.from_string(text)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"prompt.template={cfg.template!r}: {path}:{err.lineno}: {err.message}") from None
        digest = hashlib.sha256((text + "\0" + cfg.system + "\0" + cfg.prefill).encode()).hexdigest()
        return cls(Path(cfg.template).stem, m.group(1), digest, cfg.system, template, env.from_string(cfg.prefill))

    @staticmethod
    def _vars(snippet: str, language: str) -> dict:
        return {"snippet": snippet, "language": DISPLAY.get(language, language.capitalize()),
                "fence": FENCE.get(language, language)}

    def user(self, snippet: str, language: str) -> str:
        return self._template.render(**self._vars(snippet, language)).strip() + "\n"

    def prefill(self, language: str) -> str:
        """What a plain-text prompt ends with and the reply continues ("" for chat requests)."""
        return self._prefill.render(**self._vars("", language))

    def messages(self, snippet: str, language: str) -> list[dict]:
        """Chat messages: the system prompt (when set) and the rendered template."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": self.user(snippet, language)}]


def plain_prompt(messages: list[dict]) -> str:
    """A prompt for models without a chat template (base models, the completions endpoint)."""
    return "\n\n".join(m["content"].strip() for m in messages) + "\n\n"


def chat_prompt(tokenizer, messages: list[dict], use_template: bool = True) -> str:
    """The tokenizer's chat template applied (instruct models), else the plain prompt."""
    if use_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(messages)
