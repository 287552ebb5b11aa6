"""The demo corpus: built from what this machine has (even an image without the stdlib's test/ folders), and
cached under a key that changes when what it is read from changes."""

from __future__ import annotations

import shutil
import sysconfig
import types
from pathlib import Path

from arctic_pretrain.data import demo


def test_synthetic_stand_in_without_the_stdlib_test_folders(tmp_path, monkeypatch):
    """Official python Docker images delete the stdlib's test/ packages: the stand-in reads site-packages'
    test files instead, and every source still has documents."""
    real = sysconfig.get_paths()
    stdlib = tmp_path / "stdlib"  # a stdlib without test/: a few documented modules
    stdlib.mkdir()
    for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py"):
        (stdlib / name).parent.mkdir(exist_ok=True)
        shutil.copy(Path(real["stdlib"]) / name, stdlib / name)
    monkeypatch.setattr(demo.sysconfig, "get_paths", lambda: {**real, "stdlib": str(stdlib)})
    sources = demo.demo_texts(0.5)
    assert all(sources.values()), {k: len(v) for k, v in sources.items()}
    site_tests = [p for p in demo._files(Path(real["purelib"]), (".py",), lambda p: "test" in p.parts
                                         or p.name.startswith("test_"))]
    assert sources["synthetic"][0] in {p.read_text(encoding="utf-8") for p in site_tests[:50]}


def test_cache_key_follows_the_installed_distributions(monkeypatch):
    key = demo.demo_key(2, 4096)
    assert key == demo.demo_key(2, 4096) and key.startswith("py") and "-2MB-v4096-" in key
    import importlib.metadata

    installed = list(importlib.metadata.distributions())
    extra = types.SimpleNamespace(metadata={"Name": "a-new-package"}, version="1.0")
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [*installed, extra])
    assert demo.demo_key(2, 4096) != key  # a pip install changes site-packages, so the corpus, so the key
