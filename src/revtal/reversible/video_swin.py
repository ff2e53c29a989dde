"""torchvision's Video Swin blocks, with the option of computing window attention over chunks of windows.

A Video Swin block (``torchvision.models.swin_transformer.SwinTransformerBlock`` with a ``ShiftedWindowAttention3d``)
has two residual branches, ``F_attn(x) = stochastic_depth(attn(norm1(x)))`` and ``F_mlp(x) =
stochastic_depth(mlp(norm2(x)))``. By default the converted branch calls the library's attention module itself.

torchvision's attention materialises every window's attention matrix at once: at 512×224² the first stage holds
2048 windows × 3 heads × 392² scores (fp32 under autocast, plus the bf16 copy the product with V reads), gigabytes in
one block, and the MLP's hidden activations (4·C per token) come next. With ``window_chunk`` (an option of
:func:`revtal.convert`) a converted block runs the same computation ``window_chunk`` windows at a time (each
chunk: qkv projection, scores, output projection) and its LayerNorm + MLP as many windows' tokens at a time: under
``no_grad`` (the reversible forward) only one chunk's activations exist at a time, and with grad each chunk runs
under non-reentrant checkpointing, so backward recomputes one chunk at a time too.
:func:`chunk_window_attention` does the same for blocks left unconverted (frozen, adapter and conventional
backbones; conventional without recompute). The ops are the library's own in its order (pad, cyclic shift, window
partition, qkv, scaled q, q·kᵀ + relative-position bias + shift mask, softmax, ·v, projection, reverse), so the
forward equals the library's bitwise wherever a matrix product over a chunk of windows or rows equals the one over
all of them (on CPU it does, float32 and bf16: tests/test_convert_swin.py). The gradient of the relative-position bias table sums over windows chunk by chunk, a
different summation order, so it agrees to round-off only (measured in docs/SCALE.md). The library is not patched:
:func:`chunked_window_attention_3d` is revtal's own implementation of the module's forward, installed as the branch
function of converted blocks only.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

from revtal.reversible.function import Branch
from revtal.reversible.pieces import Piece
from revtal.reversible.replay import replaying_function_modes


def _window_and_shift(attn: nn.Module, size: tuple[int, int, int]) -> tuple[list[int], list[int]]:
    # a window larger than the input shrinks to the input and does not shift (as torchvision does)
    window, shift = list(attn.window_size), list(attn.shift_size)
    for i in range(3):
        if size[i] <= window[i]:
            window[i], shift[i] = size[i], 0
    return window, shift


def _region_labels(x: Tensor, padded: tuple[int, ...], window: list[int], shift: list[int]) -> Tensor:
    """(windows, tokens per window): the label of the shifted-grid region each token of each window comes from;
    two tokens of a window attend to each other unmasked only when their labels are equal."""
    labels = x.new_zeros(padded)
    regions = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    label = 0
    for d in regions[0]:
        for h in regions[1]:
            for w in regions[2]:
                labels[d[0]:d[1], h[0]:h[1], w[0]:w[1]] = label
                label += 1
    grid = [padded[i] // window[i] for i in range(3)]
    labels = labels.view(grid[0], window[0], grid[1], window[1], grid[2], window[2])
    return labels.permute(0, 2, 4, 1, 3, 5).reshape(grid[0] * grid[1] * grid[2], -1)


def _attend_windows(attn: nn.Module, x: Tensor, bias: Tensor, labels: Tensor | None, dropout: float,
                    training: bool) -> Tensor:
    """The attention of a chunk of windows ``x`` (windows, tokens, C), in the library's order: qkv projection,
    scaled q, softmax(q·kᵀ + bias + shift mask)·v, output projection (``labels``: the chunk's region labels)."""
    c, heads = x.size(-1), attn.num_heads
    qkv = nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (c // heads) ** -0.5
    scores = q.matmul(k.transpose(-2, -1))
    scores = scores + bias
    if labels is not None:
        mask = labels.unsqueeze(1) - labels.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, float(-100.0)).masked_fill(mask == 0, float(0.0))
        scores = scores + mask.unsqueeze(1)
    scores = nn.functional.softmax(scores, dim=-1)
    scores = nn.functional.dropout(scores, p=dropout, training=training)
    out = scores.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), c)
    return nn.functional.linear(out, attn.proj.weight, attn.proj.bias)


def chunked_window_attention_3d(attn: nn.Module, x: Tensor, window_chunk: int, recompute: bool = True) -> Tensor:
    """The forward of torchvision's ``ShiftedWindowAttention3d`` ``attn`` on ``x`` (B, T, H, W, C), its attention
    computed ``window_chunk`` windows at a time (see the module docstring): each chunk's qkv projection, scores
    and output projection. ``recompute=False``: chunks are never checkpointed, so with gradients on every chunk's
    activations are kept for backward as the library keeps them (only the forward's temporaries shrink to one
    chunk's)."""
    b, t, h, w, c = x.shape
    window, shift = _window_and_shift(attn, (t, h, w))
    bias = attn.get_relative_position_bias(window)
    pad = [(window[i] - (t, h, w)[i] % window[i]) % window[i] for i in range(3)]
    x = nn.functional.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    _, tp, hp, wp, _ = x.shape
    shifted = sum(shift) > 0
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1], -shift[2]), dims=(1, 2, 3))
    grid = (tp // window[0], hp // window[1], wp // window[2])
    n_windows, volume = grid[0] * grid[1] * grid[2], window[0] * window[1] * window[2]
    x = x.view(b, grid[0], window[0], grid[1], window[1], grid[2], window[2], c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * n_windows, volume, c)

    labels = _region_labels(x, (tp, hp, wp), window, shift) if shifted else None
    dropout = attn.attention_dropout if attn.training else 0.0
    # attention dropout draws one mask over all windows, which chunks would draw differently: it runs unchunked
    step = x.size(0) if dropout > 0 else max(1, int(window_chunk))
    # one chunk holding every window gains nothing from checkpointing: it runs as the library's attention does
    checkpointed = recompute and step < x.size(0) and torch.is_grad_enabled() and (
        x.requires_grad or bias.requires_grad or any(p.requires_grad for p in attn.parameters()))
    outputs = []
    # split, not slices: backward gathers the chunks' gradients once (a slice's gradient is a zero-filled tensor
    # of the whole input, one per chunk)
    for start, chunk in zip(range(0, x.size(0), step), x.split(step)):
        chunk_labels = None
        if labels is not None:
            stop = start + chunk.size(0)
            chunk_labels = labels.index_select(0, torch.arange(start, stop, device=labels.device) % n_windows)
        args = (attn, chunk, bias, chunk_labels, dropout, attn.training)
        if checkpointed:
            # a chunk draws no random numbers (attention dropout runs unchunked): its recompute needs no RNG state;
            # it runs under the forward's torch-function modes (revtal plan's CUDA emulation)
            outputs.append(torch.utils.checkpoint.checkpoint(_attend_windows, *args, use_reentrant=False,
                                                             preserve_rng_state=False,
                                                             context_fn=replaying_function_modes))
        else:
            outputs.append(_attend_windows(*args))
    x = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    del outputs
    x = nn.functional.dropout(x, p=attn.dropout, training=attn.training)
    x = x.view(b, grid[0], grid[1], grid[2], window[0], window[1], window[2], c)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, tp, hp, wp, c)
    if shifted:
        x = torch.roll(x, shifts=(shift[0], shift[1], shift[2]), dims=(1, 2, 3))
    return x[:, :t, :h, :w, :].contiguous()


def chunk_window_attention(model: nn.Module, window_chunk: int | None, *, recompute: bool = False) -> int:
    """Make every torchvision Video Swin block of ``model`` compute its window attention ``window_chunk`` windows
    at a time and its MLP as many tokens at a time as those windows hold, in place (the attention's and the MLP's
    ``forward`` are replaced on the instance; parameters, state-dict keys and outputs stay the library's); ``None``
    restores the library's forwards. For blocks that :func:`revtal.convert` has not converted (a frozen or
    adapter-wrapped backbone, conventional finetuning): without gradients one chunk's scores and MLP activations
    are live at a time, at no cost; with gradients and ``recompute=False`` nothing is recomputed and backward keeps
    every chunk's activations, as the library does. Returns the number of blocks changed."""
    if window_chunk is not None and not (isinstance(window_chunk, int) and window_chunk > 0):
        raise ValueError(f"window_chunk must be a positive number of windows or None, got {window_chunk!r}")
    changed = 0
    for block in model.modules():
        if not is_video_swin_block(block):
            continue
        for part in (block.attn, block.mlp):
            part.__dict__.pop("forward", None)
        if window_chunk is not None:
            block.attn.forward = partial(chunked_window_attention_3d, block.attn, window_chunk=window_chunk,
                                         recompute=recompute)
            block.mlp.forward = partial(_chunked_mlp_forward, block.mlp, _mlp_tokens(block, window_chunk), recompute)
        changed += 1
    return changed


def _attention_branch(block: nn.Module, window_chunk: int | None, x: Tensor) -> Tensor:
    normed = block.norm1(x)
    if window_chunk:
        return block.stochastic_depth(chunked_window_attention_3d(block.attn, normed, window_chunk))
    return block.stochastic_depth(block.attn(normed))


def _norm_mlp(block: nn.Module, x: Tensor) -> Tensor:
    return block.mlp(block.norm2(x))


def _by_token_chunks(fn, x: Tensor, tokens: int, module: nn.Module, recompute: bool) -> Tensor:
    """``fn(x)`` for a function ``fn`` of ``module`` that acts on each token (row of ``x`` (..., C)) alone, computed
    ``tokens`` rows at a time, each chunk under non-reentrant checkpointing when ``recompute`` and gradients are
    needed. Runs ``fn(x)`` whole when ``module`` draws dropout (a mask drawn per chunk would differ) or ``x`` fits
    in one chunk."""
    if _draws_dropout(module) or x.numel() <= tokens * x.size(-1):
        return fn(x)
    checkpointed = recompute and _needs_grad(x, module)
    outputs = []
    for chunk in x.reshape(-1, x.size(-1)).split(tokens):  # split, not slices (see chunked_window_attention_3d)
        if checkpointed:
            # no dropout runs in a chunk (checked above): its recompute needs no RNG state; it runs under the
            # forward's torch-function modes (revtal plan's CUDA emulation)
            outputs.append(torch.utils.checkpoint.checkpoint(fn, chunk, use_reentrant=False, preserve_rng_state=False,
                                                             context_fn=replaying_function_modes))
        else:
            outputs.append(fn(chunk))
    out = torch.cat(outputs)
    del outputs
    return out.view(*x.shape[:-1], out.size(-1))


def _draws_dropout(module: nn.Module) -> bool:
    return module.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())


def _needs_grad(x: Tensor, module: nn.Module) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def chunked_token_mlp(block: nn.Module, x: Tensor, tokens: int, recompute: bool = True) -> Tensor:
    """``block.mlp(block.norm2(x))`` for ``x`` (..., C), computed ``tokens`` tokens at a time: both act on each
    token alone, so a chunk of tokens is the same computation on fewer rows. Under ``no_grad`` one chunk's hidden
    activations (4·C per token) exist at a time; with grad and ``recompute`` each chunk runs under non-reentrant
    checkpointing, so backward holds one chunk's hidden activations instead of every token's (in a memory-free
    stage's recompute of a stage-1 block at 512×224²: 802816 tokens × 384, fc1's output and GELU's, 1.1 GiB in
    fp16). Forward: bitwise the unchunked MLP wherever a matrix product over a block of rows equals the one over
    all rows (on CPU it does, tests/test_convert_swin.py)."""
    return _by_token_chunks(partial(_norm_mlp, block), x, tokens, block, recompute)


def _chunked_mlp_forward(mlp: nn.Module, tokens: int, recompute: bool, x: Tensor) -> Tensor:
    """The forward of an unconverted block's MLP, ``tokens`` tokens at a time (installed by
    :func:`chunk_window_attention`)."""
    return _by_token_chunks(partial(type(mlp).forward, mlp), x, tokens, mlp, recompute)


def _mlp_tokens(block: nn.Module, window_chunk: int) -> int:
    """Tokens per MLP chunk: as many as ``window_chunk`` attention windows hold."""
    volume = 1
    for size in block.attn.window_size:
        volume *= size
    return window_chunk * volume


def _mlp_branch(block: nn.Module, window_chunk: int | None, x: Tensor) -> Tensor:
    if window_chunk:
        return block.stochastic_depth(chunked_token_mlp(block, x, _mlp_tokens(block, window_chunk)))
    return block.stochastic_depth(block.mlp(block.norm2(x)))


def is_video_swin_block(block: nn.Module) -> bool:
    return isinstance(getattr(block, "attn", None), ShiftedWindowAttention3d)


def video_swin_branches(block: nn.Module, context: dict) -> list[Branch]:
    window_chunk = block.__dict__.get("_revtal_options", {}).get("window_chunk")
    if not window_chunk:
        return [Branch(block, partial(_attention_branch, block, None)), Branch(block, partial(_mlp_branch, block, None))]
    return [
        Branch(block, partial(_attention_branch, block, window_chunk),
               pieces=partial(attention_pieces, block, window_chunk)),
        Branch(block, partial(_mlp_branch, block, window_chunk), pieces=partial(mlp_pieces, block, window_chunk)),
    ]


# ------------------------------------------------------------------------------------ branches as pieces of tokens
# A memory-free stage computes and differentiates a branch piece by piece (revtal.reversible.pieces): the attention
# branch by chunks of whole windows gathered from the stream, the MLP branch by chunks of tokens. Nothing of the
# size of the stream is formed inside the branch: no windowed copy of the input, no output before its reverse
# partition, no gathered gradient.


class _DropPath:
    """A block's stochastic depth applied to pieces of its branch output: one draw per call, as the library's
    ``StochasticDepth`` draws it (the same shape, dtype and RNG call, made when the first piece is ready), then each
    token scaled by the draw of its sample."""

    def __init__(self, module: nn.Module, batch: int, tokens_per_sample: int):
        self.p, self.mode, self.training = module.p, module.mode, module.training
        self.batch, self.tokens_per_sample = batch, tokens_per_sample
        self.noise: Tensor | None = None

    def __call__(self, out: Tensor, rows: Tensor | slice) -> Tensor:
        if not self.training or self.p == 0.0:
            return out
        if self.noise is None:
            size = [self.batch] + [1] * 4 if self.mode == "row" else [1] * 5
            survival = 1.0 - self.p
            noise = torch.empty(size, dtype=out.dtype, device=out.device).bernoulli_(survival)
            if survival > 0.0:
                noise.div_(survival)
            self.noise = noise.reshape(-1)
        if self.noise.numel() == 1:
            return out * self.noise
        if isinstance(rows, slice):
            rows = torch.arange(rows.start, rows.stop, device=out.device)
        return out * self.noise.index_select(0, torch.div(rows, self.tokens_per_sample, rounding_mode="floor"))[:, None]


def _window_rows(x: Tensor, window: list[int], shift: list[int]) -> tuple[Tensor, Tensor | None, list[int] | None]:
    """The library's windows of ``x`` (B, T, H, W, C) after padding and cyclic shift, as rows of
    ``x.reshape(-1, C)``: (B·windows, tokens per window) row numbers in the library's window and token order; which
    of them are real tokens (None: all; a padding token's row number is 0); and how many real tokens each window
    holds (None: all), counted from the geometry alone."""
    b, t, h, w, _ = x.shape
    size = (t, h, w)
    pad = [(window[i] - size[i] % window[i]) % window[i] for i in range(3)]
    axes, real_per_window = [], []
    for i in range(3):
        padded = size[i] + pad[i]
        # position p of the shifted padded axis holds padded position (p + shift) mod padded
        source = [(p + shift[i]) % padded for p in range(padded)]
        axes.append(torch.tensor(source, device=x.device).view(-1, window[i]))
        real_per_window.append([sum(q < size[i] for q in source[g:g + window[i]]) for g in range(0, padded, window[i])])
    (gt, wt), (gh, wh), (gw, ww) = (a.shape for a in axes)
    tt = axes[0].view(gt, 1, 1, wt, 1, 1)
    hh = axes[1].view(1, gh, 1, 1, wh, 1)
    www = axes[2].view(1, 1, gw, 1, 1, ww)
    real = (tt < t) & (hh < h) & (www < w)
    rows = ((tt * h + hh) * w + www).masked_fill(~real, 0).reshape(gt * gh * gw, wt * wh * ww)
    rows = (rows.unsqueeze(0) + torch.arange(b, device=x.device).view(b, 1, 1) * (t * h * w)).reshape(-1, rows.size(1))
    if not any(pad):
        return rows, None, None
    counts = [a * c * d for a in real_per_window[0] for c in real_per_window[1] for d in real_per_window[2]]
    return rows, real.reshape(1, -1, rows.size(1)).expand(b, -1, -1).reshape(-1, rows.size(1)), counts * b


def attention_pieces(block: nn.Module, window_chunk: int, x: Tensor) -> list[Piece] | None:
    """F_attn = stochastic_depth(attn(norm1(x))) as pieces of ``window_chunk`` whole windows (None while the block
    draws attention dropout, whose mask spans every window)."""
    attn = block.attn
    if attn.training and (attn.attention_dropout > 0 or attn.dropout > 0):
        return None
    b, t, h, w, c = x.shape
    window, shift = _window_and_shift(attn, (t, h, w))
    rows, real, real_counts = _window_rows(x, window, shift)
    padded = tuple(s + (window[i] - s % window[i]) % window[i] for i, s in enumerate((t, h, w)))
    labels = _region_labels(x, padded, window, shift) if sum(shift) > 0 else None
    n_windows = rows.size(0) // b
    drop_path = _DropPath(block.stochastic_depth, b, t * h * w)
    pieces = []
    for start in range(0, rows.size(0), window_chunk):
        chunk = rows[start:start + window_chunk]
        real_rows = kept = None
        if real is not None:
            real_rows = real[start:start + window_chunk].reshape(-1)
            # the real rows' positions, in order: a stable sort puts them first, and their number is the geometry's
            order = torch.argsort((~real_rows).to(torch.uint8), stable=True)
            kept = order[:sum(real_counts[start:start + window_chunk])]
        chunk_labels = None
        if labels is not None:
            chunk_labels = labels.index_select(0, torch.arange(start, start + chunk.size(0), device=labels.device)
                                               % n_windows)
        flat_rows = chunk.reshape(-1)
        pieces.append(Piece(flat_rows, partial(_attend_piece, block, window, chunk.size(1), chunk_labels, real_rows,
                                               drop_path, flat_rows), kept))
    return pieces


def _attend_piece(block: nn.Module, window: list[int], volume: int, labels: Tensor | None,
                  real_rows: Tensor | None, drop_path: _DropPath, rows: Tensor, x: Tensor) -> Tensor:
    normed = block.norm1(x)
    if real_rows is not None:  # the library pads after the norm: padding tokens are zeros
        normed = normed.masked_fill(~real_rows.unsqueeze(-1), 0.0)
    bias = block.attn.get_relative_position_bias(window)
    out = _attend_windows(block.attn, normed.view(-1, volume, normed.size(-1)), bias, labels, 0.0, False)
    return drop_path(out.reshape(x.size(0), -1), rows)


def mlp_pieces(block: nn.Module, window_chunk: int, x: Tensor) -> list[Piece] | None:
    """F_mlp = stochastic_depth(mlp(norm2(x))) as pieces of as many tokens as ``window_chunk`` windows hold (None
    while the MLP draws dropout)."""
    if _draws_dropout(block.mlp):
        return None
    tokens = x.numel() // x.size(-1)
    drop_path = _DropPath(block.stochastic_depth, x.size(0), tokens // x.size(0))
    step = _mlp_tokens(block, window_chunk)

    def run(rows: slice, chunk: Tensor) -> Tensor:
        return drop_path(_norm_mlp(block, chunk), rows)

    return [Piece(slice(start, min(start + step, tokens)), partial(run, slice(start, min(start + step, tokens))))
            for start in range(0, tokens, step)]
