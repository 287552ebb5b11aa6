"""resolve_vml_kernels covers every op torch hands to MKL VML, and calls each one single-threaded."""

from __future__ import annotations

import ctypes
import functools
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from arctic_pretrain.common.cpu_math import VML_OPS, resolve_vml_kernels

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL: no VML")

# Float ops a model, an optimizer or a loss can reach (unary math, activations, reductions built on them).
CANDIDATES = {name: getattr(torch, name) for name in (
    "abs", "acos", "acosh", "asin", "asinh", "atan", "atanh", "ceil", "cos", "cosh", "digamma", "erf", "erfc",
    "erfinv", "exp", "exp2", "expm1", "floor", "frac", "i0", "lgamma", "log", "log10", "log1p", "log2", "logit",
    "neg", "reciprocal", "round", "rsqrt", "sigmoid", "sign", "sin", "sinc", "sinh", "sqrt", "square", "tan",
    "tanh", "trunc")}
CANDIDATES.update({"gelu": F.gelu, "silu": F.silu, "softplus": F.softplus, "elu": F.elu, "mish": F.mish,
                   "logsigmoid": F.logsigmoid, "softmax": lambda x: x.softmax(-1),
                   "log_softmax": lambda x: x.log_softmax(-1), "pow": lambda x: x.pow(2.5),
                   "foreach_sqrt": lambda x: torch._foreach_sqrt([x])[0]})
DOMAIN_ERRORS = (float("inf"), float("-inf"), float("nan"), -1.0, 2.0, -2.0, 0.0, 1000.0, -1000.0)


@functools.cache
def vml_status():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    get, clear = lib.vmlGetErrStatus, lib.vmlClearErrStatus
    get.restype = clear.restype = ctypes.c_int
    return get, clear


def reaches_vml(fn, dtype) -> bool:
    """VML records a domain error (log(-1), cos(inf), exp(1000)) in its status; nothing else in torch does."""
    get, clear = vml_status()
    for value in DOMAIN_ERRORS:
        clear()
        fn(torch.tensor([value, value], dtype=dtype))
        if get() != 0:
            return True
    return False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_op_that_reaches_mkl_vml_is_resolved(dtype):
    routed = {name for name, fn in CANDIDATES.items() if reaches_vml(fn, dtype)}
    assert {"cos", "sin", "sqrt", "exp", "log"} <= routed  # the detection works (RoPE, Adam, losses)
    composite = {"logit": "log", "foreach_sqrt": "sqrt"}
    missing = {name for name in routed if composite.get(name, name) not in VML_OPS}
    assert not missing, f"torch now computes {sorted(missing)} with MKL VML: add them to common/cpu_math.VML_OPS"


def test_resolve_calls_each_op_once_on_one_element_per_precision():
    """One element: ATen runs it on the calling thread only, so MKL picks the kernel single-threaded."""
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if isinstance(args[0], torch.Tensor):  # not the torch.full that makes the input
                calls.append((func.overloadpacket.__name__, args[0].dtype, args[0].numel()))
            return func(*args, **(kwargs or {}))

    with Record():
        assert resolve_vml_kernels.__wrapped__() is True
    made = {(op, dtype) for op, dtype, numel in calls if numel == 1}
    assert made >= {(op, dtype) for op in VML_OPS for dtype in (torch.float32, torch.float64)}
    assert all(numel == 1 for _, _, numel in calls)
