"""CPU math that is right from a process's first call (issue 16; upstream pytorch/pytorch#188792).

ATen hands contiguous float32/float64 unary ops (``cos``, ``sin``, ``sqrt``, ``exp``, ``log``, ...) to MKL's
vector math library (VML), each intra-op thread calling it on its chunk. oneMKL 2024.2, the one linked into
the torch wheels, picks each VML function's kernel lazily at its first call; when that first call comes
from several threads at once (a fresh process's first sizable op: the RoPE ``cos`` of the first forward,
Adam's first ``sqrt``), one thread can run a low-accuracy kernel for its whole chunk: errors up to a few
thousand ulp, once, then never again in that process. Seen here as a rerun whose first step after a
resume left the reference run (rank 1's first RoPE ``cos``: same input, second half of the output off by
up to 2534 ulp). Calling each function once on one element, before anything runs in parallel, makes MKL
pick its kernels single-threaded: the fix upstream proposes inside ATen (a per-function warm-up).
"""

from __future__ import annotations

import functools

# Unary ops ATen routes to MKL VML for float32 and float64 (aten/src/ATen/cpu/vml.h). Those VML can report a
# domain error for are checked by tests/common/test_cpu_math.py; erf, tanh and atan cannot raise one and are
# listed from vml.h. Composite ops reach VML through these (logsumexp: exp and log; logit: log).
VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
           "tan", "tanh")


@functools.cache
def resolve_vml_kernels() -> bool:
    """Call every VML-backed op once on one element (no intra-op parallelism), so each VML function picks its
    kernel in one thread. Idempotent and cheap (microseconds); False where torch has no MKL."""
    import torch

    if not torch.backends.mkl.is_available():
        return False
    for dtype in (torch.float32, torch.float64):
        one = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(one)
    return True
