"""CUDA's precision and attention kernels for a training step simulated on CPU (fake) tensors.

``revtal plan`` runs a recipe's step on fake CPU tensors, but the memory it predicts is a GPU's. Two things differ:

* **Autocast rules.** CPU autocast keeps layer_norm, softmax, sums, exp/log, pow and most losses in the lower
  precision, where CUDA autocast runs them in float32 (a float32 softmax output is twice the bytes of a bf16 one:
  the N×N attention matrix of explicit attention), and CPU runs ``avg_pool3d`` in float32 where CUDA does not.
  :class:`CudaAutocast` is a ``TorchFunctionMode`` (it acts above autograd, where autocast acts, so autograd saves
  the cast tensors as on a GPU) that applies CUDA's lists while ``torch.autocast("cpu")`` is on. The region itself,
  its replay by reversible and checkpointed recomputes, and the cached casts of parameters (one low-precision copy
  per weight per region, freed when the region ends) stay torch's CPU autocast, whose lower-precision list is the
  same as CUDA's for every op the backbones here call (conv, linear, matmul, bmm, baddbmm, addmm).
* **Normalisation statistics.** The fake (meta) kernels of layer, group and batch norm return the mean and
  inverse standard deviation they save for backward in the input's dtype on a CPU tensor, while the real kernels
  keep them in float32 for a bf16/fp16 input in some cases. :class:`NormStatistics` gives them the real kernels'
  dtype, per device (see there).
* **Attention kernels.** ``F.scaled_dot_product_attention`` on a GPU runs FlashAttention-2 (bf16/fp16, no mask,
  head dim ≤ 256) or the memory-efficient kernel (a mask, or float32), which save q, k, v, the output and the
  float32 log-sum-exp instead of the N×N matrix the CPU's math path builds. :class:`CudaAttention` allocates what
  those kernels allocate (values are not computed: it runs on fake tensors only).

The op lists are torch's: the names in ``torch/testing/_internal/autocast_test_lists.py`` (``AutocastTestLists``:
CUDA; ``AutocastCPUTestLists``: CPU), which mirror ``aten/src/ATen/autocast_mode.cpp``; a test checks these sets
against the installed torch's file. Not in those lists, taken from ``autocast_mode.cpp``: ``scaled_dot_product_
attention`` (lower precision on CUDA) and which float32 ops only set ``dtype=float32`` (``fp32_set_opt_dtype``:
the input is not copied, the output is float32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from revtal.reversible.simulation import simulating

# CUDA autocast (AutocastTestLists: torch_fp16, nn_fp16, linalg_fp16, methods_fp16 as "matmul")
CUDA_LOWER_PRECISION = frozenset({
    "_convolution", "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul", "conv1d", "conv2d",
    "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolution",
    "cudnn_convolution", "cudnn_convolution_transpose", "einsum", "gru_cell", "lstm_cell", "matmul", "mm", "mv",
    "prelu", "rnn_relu_cell", "rnn_tanh_cell", "linear", "linalg_multi_dot", "linalg_vecdot",
    "scaled_dot_product_attention",  # autocast_mode.cpp (not in the test lists)
})
# AutocastTestLists: torch_fp32, nn_fp32, methods_fp32 ("pow")
CUDA_FLOAT32 = frozenset({
    "acos", "asin", "binary_cross_entropy_with_logits", "cdist", "cosh", "cosine_embedding_loss",
    "cosine_similarity", "cumprod", "cumsum", "dist", "erfinv", "exp", "expm1", "group_norm",
    "hinge_embedding_loss", "kl_div", "layer_norm", "log", "log10", "log1p", "log2", "log_softmax", "logsumexp",
    "margin_ranking_loss", "norm", "pdist", "poisson_nll_loss", "pow", "prod", "reciprocal", "renorm", "rms_norm",
    "rsqrt", "sinh", "softmax", "sum", "tan", "triplet_margin_loss", "l1_loss", "mse_loss", "multi_margin_loss",
    "multilabel_margin_loss", "nll_loss", "nll_loss2d", "smooth_l1_loss", "soft_margin_loss", "softplus",
})
# of those, the ones autocast_mode.cpp runs with dtype=float32 instead of casting the input (fp32_set_opt_dtype)
CUDA_FLOAT32_OUTPUT = frozenset({"cumprod", "cumsum", "log_softmax", "prod", "softmax", "sum"})
# AutocastTestLists.torch_need_autocast_promote: run in the widest floating type of the inputs
CUDA_PROMOTE = frozenset({
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put", "scatter_add",
    "tensordot", "vdot",
})
# CPU autocast's lists (AutocastCPUTestLists), for the ops where the two devices differ
CPU_LOWER_PRECISION = frozenset({
    "_addmm_activation", "_native_multi_head_attention", "addbmm", "addmm", "baddbmm", "bmm", "conv1d", "conv2d",
    "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "matmul", "mm", "prelu",
    "linear", "scaled_dot_product_attention",
})
CPU_FLOAT32 = frozenset({
    "binary_cross_entropy_with_logits", "cosine_embedding_loss", "hinge_embedding_loss", "margin_ranking_loss",
    "poisson_nll_loss", "triplet_margin_loss", "avg_pool3d", "binary_cross_entropy", "huber_loss", "l1_loss",
    "mse_loss", "multi_margin_loss", "multilabel_margin_loss", "nll_loss", "nll_loss2d", "reflection_pad1d",
    "smooth_l1_loss", "soft_margin_loss",
})

_LOW = (torch.float16, torch.bfloat16)


def op_name(func) -> str:
    """The aten-style name of a function seen by a TorchFunctionMode: ``F._max_pool3d`` → ``max_pool3d``,
    ``Tensor.__matmul__`` → ``matmul``."""
    name = getattr(func, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    name = name.lstrip("_") if name not in ("_convolution",) else name
    return "sum" if name == "sum_to_size" else name


def _cast(dtype: torch.dtype, only_from: tuple[torch.dtype, ...] | None = None):
    def cast(value):
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64 \
                and value.dtype != dtype and (only_from is None or value.dtype in only_from):
            return value.to(dtype)
        return value
    return cast


class CudaAutocast(TorchFunctionMode):
    """While ``torch.autocast("cpu")`` is enabled, run ops with CUDA autocast's precision instead of the CPU's (see
    the module docstring); scaled-dot-product attention runs as :class:`CudaAttention`. Outside autocast regions
    every op runs unchanged, except attention (a GPU runs its kernels in float32 too)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if not torch.is_autocast_enabled("cpu"):
            if name == "scaled_dot_product_attention":
                return cuda_attention(*args, **kwargs)
            return func(*args, **kwargs)
        lower = torch.get_autocast_dtype("cpu")
        if name == "scaled_dot_product_attention":
            args, kwargs = tree_map(_cast(lower), (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return cuda_attention(*args, **kwargs)
        if name in CUDA_FLOAT32:
            if name in CUDA_FLOAT32_OUTPUT:
                first = args[0] if args else kwargs.get("input")
                if kwargs.get("dtype") is None and isinstance(first, Tensor) and first.dtype in _LOW:
                    kwargs = {**kwargs, "dtype": torch.float32}
            else:
                args, kwargs = tree_map(_cast(torch.float32, _LOW), (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        if name in CUDA_PROMOTE:
            widest = max((a.dtype for a in tree_flatten_tensors((args, kwargs)) if a.is_floating_point()),
                         key=lambda d: torch.finfo(d).bits, default=None)
            if widest is not None:
                args, kwargs = tree_map(_cast(widest), (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        if name in CUDA_LOWER_PRECISION and name not in CPU_LOWER_PRECISION:
            args, kwargs = tree_map(_cast(lower), (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        if name in CPU_FLOAT32 or (name in CPU_LOWER_PRECISION and name not in CUDA_LOWER_PRECISION):
            with torch.autocast("cpu", enabled=False):  # CUDA leaves these in the input's precision
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def tree_flatten_tensors(tree) -> list[Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, Tensor)]


# ------------------------------------------------------------------------------------------------------ attention
def _round_up(n: int, multiple: int) -> int:
    return multiple * -(-n // multiple)


def attention_backend(q: Tensor, attn_mask: Tensor | None) -> str:
    """The kernel ``F.scaled_dot_product_attention`` picks on an Ampere-or-newer GPU (torch's default order: flash,
    then memory-efficient, then math): flash needs fp16/bf16, no mask and head dim ≤ 256; memory-efficient takes
    float32 and masks."""
    if q.dtype in _LOW and attn_mask is None and q.shape[-1] <= 256:
        return "flash"
    if q.shape[-1] <= 256 or q.dtype == torch.float32:
        return "efficient"
    return "math"


class CudaAttention(torch.autograd.Function):
    """``F.scaled_dot_product_attention`` as a GPU kernel allocates it, on tensors without values.

    Forward: the output (q's dtype and batch shape, v's head dim) and the float32 log-sum-exp, (..., N) for flash
    and (..., N rounded up to 32) for the memory-efficient kernel; saved for backward: q, k, v, the mask, the output
    and the log-sum-exp. Backward: dq, dk, dv (and the mask's gradient if it needs one) plus the kernels' scratch
    tensors: FlashAttention-2's ``softmax_d`` float32 (..., N rounded to 128) and ``dq_accum`` float32 (batch, N
    rounded to 128, heads, head dim rounded to 32); the memory-efficient kernel's ``delta`` float32 (..., N). The
    philox seed/offset of dropout (two 8-byte scalars) are left out.
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, backend):
        n = q.shape[-2]
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse_len = n if backend == "flash" else _round_up(n, 32)
        lse = q.new_empty((*q.shape[:-2], lse_len), dtype=torch.float32)
        ctx.backend = backend
        ctx.mask_grad = attn_mask is not None and attn_mask.requires_grad
        ctx.save_for_backward(q, k, v, out, lse, *([attn_mask] if attn_mask is not None else []))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, *mask = ctx.saved_tensors
        n = q.shape[-2]
        if ctx.backend == "flash":
            batch, heads = (q.shape[0] if q.ndim == 4 else 1), q.shape[-3]
            softmax_d = q.new_empty((*q.shape[:-2], _round_up(n, 128)), dtype=torch.float32)
            dq_accum = q.new_empty((batch, _round_up(n, 128), heads, _round_up(q.shape[-1], 32)), dtype=torch.float32)
            scratch = [softmax_d, dq_accum]
        else:
            scratch = [q.new_empty(q.shape[:-1], dtype=torch.float32)]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_mask = torch.empty_like(mask[0]) if ctx.mask_grad else None
        del scratch
        return dq, dk, dv, grad_mask, None


def cuda_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` with the memory of the kernel a GPU runs (:func:`attention_backend`)."""
    if not simulating(query):
        raise RuntimeError("CUDA attention is emulated on tensors without values only (revtal plan's fake tensors)")
    backend = attention_backend(query, attn_mask)
    if backend == "math":  # the composite path: explicit attention, in the inputs' precision
        scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        attn = (query * scale) @ key.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(-1)
        if dropout_p > 0:
            attn = torch.nn.functional.dropout(attn, dropout_p)
        return attn @ value
    return CudaAttention.apply(query, key, value, attn_mask, backend)


# ------------------------------------------------------------------------------------- normalisation statistics
def _norm_operands(name: str, args: tuple) -> tuple[Tensor, list]:
    """The input and the affine parameters (weight, bias) of a normalisation op's arguments."""
    if name == "native_layer_norm":  # (input, normalized_shape, weight, bias, eps)
        return args[0], [args[2], args[3]]
    return args[0], [args[1], args[2]]  # group / batch norm: (input, weight, bias, ...)


_NORM_OPS = {"native_layer_norm": "layer", "native_group_norm": "group", "native_batch_norm": "batch",
             "_native_batch_norm_legit": "batch", "_native_batch_norm_legit_functional": "batch",
             "_native_batch_norm_legit_no_training": "batch"}


class NormStatistics(TorchDispatchMode):
    """Give the statistics that layer, group and batch norm save for backward (outputs 1 and 2: mean and inverse
    standard deviation) the dtype the real kernels of ``device`` give them; torch's fake kernels give them the
    input's dtype on a CPU tensor. For a bf16/fp16 input:

    * ``device="cpu"`` (checked against the real CPU kernels in ``tests/test_bench_plan.py``): float32 when the
      weight or bias is float32 ("mixed type": ``param_scalar_type`` in ATen's ``layer_norm.cpp``,
      ``group_norm.cpp`` and ``Normalization.cpp``), else the input's dtype. A bf16 token stream through a float32
      LayerNorm (the in-block adapters under bf16 autocast) saves float32 statistics.
    * ``device="cuda"``: float32 for layer and batch norm (the CUDA kernels keep them in the accumulation type:
      torch's reference implementations ``torch._refs.native_layer_norm`` and ``torch._decomp``'s batch norm
      cast them to the input's dtype on CPU only); group norm as on the CPU (its mixed-type rule is in the
      device-independent ``group_norm.cpp``). Not checked on a GPU in this session.

    Acts on fake tensors only: a real kernel already allocates what it allocates."""

    def __init__(self, device: str = "cpu"):
        super().__init__()
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device

    def statistics_dtype(self, name: str, x: Tensor, affine: list) -> torch.dtype | None:
        if x.dtype not in _LOW:
            return None
        mixed = any(isinstance(p, Tensor) and p.dtype == torch.float32 for p in affine)
        if mixed or (self.device == "cuda" and _NORM_OPS[name] in ("layer", "batch")):
            return torch.float32
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in _NORM_OPS or not simulating(args[0]):
            return out
        x, affine = _norm_operands(name, args)
        dtype = self.statistics_dtype(name, x, affine)
        if dtype is None or all(t.dtype == dtype for t in out[1:3]):
            return out
        stats = [torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device) for t in out[1:3]]
        return (out[0], *stats, *out[3:])
