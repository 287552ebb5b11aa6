"""Process-group facts for any launcher (deepspeed, torchrun, srun/submitit, plain python).

The torch launchers export RANK/WORLD_SIZE/LOCAL_RANK. A task that ``srun`` (or submitit) starts directly,
one per GPU, has only SLURM's: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID then give the rank, world size and
local rank, and the rendezvous is the job's first node on a port derived from the job id. SLURM's
variables count only inside a job step (SLURM_STEP_NUM_TASKS, which srun sets): a batch script itself
also carries SLURM_NTASKS, but there it is one process, not a rank of several.
"""

from __future__ import annotations

import atexit
import os
import re
from pathlib import Path

import torch
import torch.distributed as dist

from arctic_pretrain.common.net import free_port


def slurm_ranks(env: os._Environ | dict | None = None) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from an srun task's SLURM variables ({} if none)."""
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return {}
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    job = int(env.get("SLURM_JOB_ID", "0") or 0)
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env.get("SLURM_NTASKS", env["SLURM_STEP_NUM_TASKS"]),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_ADDR": env.get("MASTER_ADDR", first_host(nodes)),
            "MASTER_PORT": env.get("MASTER_PORT", str(20000 + job % 20000))}


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: ``gpu[003-010,012],cpu1`` -> ``gpu003``."""
    first = re.match(r"[^,\[]+(\[[^\]]*\])?", nodelist).group(0)
    m = re.fullmatch(r"(.*?)\[([^\],-]+)[^\]]*\](.*)", first)
    return f"{m.group(1)}{m.group(2)}{m.group(3)}" if m else first


def env_rank() -> int:
    return int(os.environ.get("RANK") or slurm_ranks().get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE") or slurm_ranks().get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Start the process group with DeepSpeed's defaults (nccl on GPUs, gloo/ccl on CPU)."""
    import deepspeed

    os.environ.update(slurm_ranks())
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend=None, verbose=False)
    atexit.register(shutdown)  # at exit, not after a run: a sweep runs several in one process group
    release_shm_workspace()


def release_shm_workspace() -> None:
    """Unlink this rank's DeepSpeed shm segment once every rank has mapped it. On CPU, DeepSpeed creates a
    ~65 MB segment per rank named by the rendezvous address (deepspeed/ops/csrc/cpu/comm/shm.cpp) and never
    removes it, so each job left 65 MB per rank in /dev/shm (RAM) for good: a day of test launches filled
    19 GB here. Unlinked, the memory goes back when the last rank exits, however it exits (a SIGKILL included)."""
    env = os.environ
    segment = Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_"
                                  f"{env['MASTER_PORT']}_{env['RANK']}")
    if not segment.exists():
        return  # GPUs: no shm op
    barrier()  # each rank opened every other rank's segment inside init_distributed
    segment.unlink(missing_ok=True)


def shutdown() -> None:
    """Destroy the process group while the interpreter is still whole (an atexit hook). Left to interpreter teardown, gloo's worker
    threads can be destroyed while joinable: the rank aborts with "terminate called without an active
    exception" (exit status 250 here, pytorch/pytorch#190489) after a run that finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj):
    """Rank 0's value on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
