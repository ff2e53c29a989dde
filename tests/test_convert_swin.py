"""Swin converters (timm image Swin, torchvision Video Swin): the original point is bitwise the pretrained network,
reversible gradients match vanilla, memory is constant in depth, checkpoints load strictly, exact arithmetic
reconstructs bitwise, shifted-window masks are built once per stage forward, unsupported blocks are named."""

import copy
import io

import pytest
import torch
import torchvision.models.swin_transformer as tv_swin
from timm.models import swin_transformer as timm_swin
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torchvision.models.video import swin3d_t
from torchvision.models.video.swin_transformer import SwinTransformer3d

import revtal
from revtal.reversible import reversible_stages, swin
from revtal.utils.memory import saved_bytes
from tests.helpers import assert_reversible_matches_vanilla, grads, max_relative_gap


def tiny_timm_swin(depths=(2, 2), seed=0, **kw):
    # 10x10 tokens with 4x4 windows: exercises padding as well as the shift (mask) path
    torch.manual_seed(seed)
    kw = {"img_size": 20, "patch_size": 2, "embed_dim": 8, "num_heads": (2,) * len(depths), "window_size": 4,
          "num_classes": 3, "drop_path_rate": 0.2, **kw}
    return SwinTransformer(depths=depths, **kw)


def tiny_video_swin(depths=(2, 2), seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"patch_size": [2, 4, 4], "embed_dim": 8, "num_heads": [2] * len(depths), "window_size": [2, 4, 4],
          "num_classes": 3, "stochastic_depth_prob": 0.2, **kw}
    return SwinTransformer3d(depths=list(depths), **kw)


IMAGE = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
VIDEO = torch.randn(1, 3, 4, 40, 40, generator=torch.Generator().manual_seed(2))  # tokens 2x10x10
BUILDERS = {
    "timm": (tiny_timm_swin, IMAGE),
    "timm_dynamic": (lambda **kw: tiny_timm_swin(dynamic_img_size=True, **kw), IMAGE),
    "torchvision_3d": (tiny_video_swin, VIDEO),
}


def _loss(model, x):
    return (model(x) ** 2).sum()


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_original_point_is_bitwise_the_pretrained_network(family):
    build, x = BUILDERS[family]
    ref = build()
    model = revtal.convert(copy.deepcopy(ref), "original")
    assert len(reversible_stages(model)) == 2
    for train in (False, True):  # train: drop-path draws the same masks in the same order
        ref.train(train), model.train(train)
        torch.manual_seed(7)
        out_ref = ref(x)
        torch.manual_seed(7)
        out = model(x)
        assert torch.equal(out_ref, out)
    for net in (ref, model):
        torch.manual_seed(7)
        _loss(net, x).backward()
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        assert torch.equal(a.grad, b.grad), name


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_reversible_gradients_match_vanilla_float64_at_re2_point(family):
    build, x = BUILDERS[family]
    ref = build().double().train()  # train: drop-path masks must be replayed in the recompute
    x = x.double().requires_grad_(True)
    assert_reversible_matches_vanilla(ref, x, 1e-10, seed=3, method="dr2net", alpha=0.0, beta=1.0)


def test_saved_bytes_constant_in_depth_within_a_stage():
    x = IMAGE[:1]
    for build, inp in ((tiny_timm_swin, x), (tiny_video_swin, VIDEO)):
        saved = {}
        for depth in (2, 4, 6):
            model = revtal.convert(build(depths=(depth,)), "dr2net", alpha=0.5, beta=0.5)
            saved[depth] = saved_bytes(lambda: _loss(model, inp), model)
        assert max(saved.values()) <= 1.05 * min(saved.values()), saved
        # vanilla mode stores every block: it must grow (the meter does see the stage's tensors)
        vanilla = {
            depth: saved_bytes(lambda: _loss(m, inp), m)
            for depth in (2, 6)
            for m in [revtal.convert(build(depths=(depth,)), "dr2net", alpha=0.5, beta=0.5, backprop="vanilla")]
        }
        assert vanilla[6] > 2 * vanilla[2], vanilla


@pytest.mark.parametrize("family", ["timm", "torchvision_3d"])
def test_original_checkpoint_loads_strictly_into_converted_model(family):
    build, x = BUILDERS[family]
    ref = build().eval()
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    model = revtal.convert(build(seed=1), "dr2net").eval()
    assert list(model.state_dict()) == list(ref.state_dict())
    buffer.seek(0)
    model.load_state_dict(torch.load(buffer), strict=True)
    revtal.set_backprop(model, "vanilla")
    revtal.set_coefficients(model, 1.0, 0.0)
    assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_exact_backprop_reconstructs_every_stage_input_bitwise(family):
    build, x = BUILDERS[family]
    model = revtal.convert(build(), "dr2net", alpha=1.0, beta=1 / 8, backprop="exact").train()
    stages = reversible_stages(model)
    for stage in stages:
        assert stage.beta == 0.125
        stage.verify_next_backward()
    _loss(model, x).backward()
    for stage in stages:
        assert stage.last_check is not None and stage.last_check.bitwise, (stage.stage_name, stage.last_check)


def _count_calls(monkeypatch, owner, name):
    """Record every result of ``owner.name`` that is not None."""
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        if result is not None:  # timm's mask builder also runs (and returns None) in unshifted blocks
            calls.append(result)
        return result

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_shifted_window_mask_built_once_per_stage_and_reused_in_recompute(monkeypatch):
    build, x = BUILDERS["timm_dynamic"]
    calls = _count_calls(monkeypatch, timm_swin.SwinTransformerBlock, "get_attn_mask")
    ref = build(depths=(4,))  # one stage, two shifted blocks
    model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.5, beta=0.5)
    calls.clear()
    ref(x)
    assert len(calls) == 2  # the library builds the mask in every shifted block
    calls.clear()
    _loss(model, x).backward()  # forward (4 attention branches) + recompute (4 more)
    assert len(calls) == 1
    calls.clear()
    model(x)
    model(x)
    assert len(calls) == 2, "each stage forward builds its own mask (input sizes may change between calls)"


class _CustomBlock(nn.Module):
    def forward(self, x):
        return x


def test_unsupported_blocks_are_named_with_the_supported_types():
    model = tiny_timm_swin()
    model.layers[1].blocks[1] = _CustomBlock()
    with pytest.raises(TypeError, match=r"layers\.1\.blocks\.1 is a .*_CustomBlock.*timm\.models\.swin_transformer"):
        revtal.convert(model)
    model = tiny_video_swin()
    model.features[2][0] = _CustomBlock()
    with pytest.raises(TypeError, match=r"features\.2\.0 is a .*_CustomBlock.*swin_transformer\.SwinTransformerBlock"):
        revtal.convert(model)


def test_torchvision_swin_converts_without_patching_the_library():
    import torchvision.models.video.swin_transformer as tv_swin3d

    library_functions = dict(vars(tv_swin3d)), dict(vars(tv_swin))
    revtal.convert(tiny_video_swin())
    revtal.convert(tv_swin.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2], num_heads=[2], window_size=[4, 4]))
    assert (dict(vars(tv_swin3d)), dict(vars(tv_swin))) == library_functions


def test_grad_checkpointing_is_refused():
    model = tiny_timm_swin()
    model.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="grad_checkpointing"):
        revtal.convert(model)


def test_swin3d_t_small_clip_trains_in_reversible_mode_like_vanilla():
    torch.manual_seed(0)
    ref = swin3d_t(weights=None, num_classes=4).train()
    x = torch.randn(1, 3, 4, 64, 64)
    results = []
    for mode in ("reversible", "vanilla"):
        model = revtal.convert(copy.deepcopy(ref), "re2", backprop=mode)
        torch.manual_seed(11)  # same stochastic-depth masks in both runs
        _loss(model, x).backward()
        results.append(grads(model))
    assert len(reversible_stages(model)) == 4
    assert len(results[0]) == len(list(ref.parameters()))
    assert all(torch.isfinite(g).all() for g in results[0])
    # float32 at the Re² point: measured 7.6e-7 relative (docs/CONVERTERS.md)
    assert max_relative_gap(results[0], results[1]) < 1e-5


# Video Swin window attention over chunks of windows (revtal.reversible.video_swin): 12×12 tokens per frame pair
# with 4×4 windows (9 windows, 3 of them masked after the shift), 2 windows per chunk
CHUNK_VIDEO = torch.randn(1, 3, 4, 48, 48, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("train", [False, True])
def test_video_swin_chunked_window_attention_is_bitwise_the_library_at_the_original_point(precision, train):
    ref = tiny_video_swin().train(train)
    model = revtal.convert(copy.deepcopy(ref), "original", window_chunk=2).train(train)
    _assert_same_forward(model, ref, precision)


def _assert_same_forward(model, ref, precision: str, video=CHUNK_VIDEO) -> None:
    """``model`` computes bitwise ``ref``'s output on ``video`` (same drop-path draws), in float32 or bf16."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        torch.manual_seed(5)
        expected = ref(video)
        torch.manual_seed(5)
        got = model(video)
    assert torch.equal(got, expected)


def test_video_swin_chunked_window_attention_gradients_match_the_library():
    ref = tiny_video_swin(stochastic_depth_prob=0.0)
    results = []
    for options in ({}, {"window_chunk": 2}):
        model = revtal.convert(copy.deepcopy(ref), "original", backprop="vanilla", **options)
        _loss(model, CHUNK_VIDEO).backward()
        results.append(grads(model))
    # only the relative-position bias tables sum over windows in another order (measured 5e-8 relative)
    assert max_relative_gap(results[1], results[0]) < 1e-5


def test_video_swin_chunked_window_attention_keeps_no_attention_matrices_for_backward():
    # the library's attention keeps each block's softmax output (windows × heads × 32² fp32) for backward: 9 windows
    # in the two first-stage blocks, 4 (padded) in the two second-stage ones; chunks keep their inputs instead
    ref = tiny_video_swin(stochastic_depth_prob=0.0)
    library = revtal.convert(copy.deepcopy(ref), "original", backprop="vanilla")
    chunked = revtal.convert(copy.deepcopy(ref), "original", backprop="vanilla", window_chunk=2)
    kept = [saved_bytes(lambda m=m: _loss(m, CHUNK_VIDEO), m) for m in (library, chunked)]
    scores = 2 * (9 + 4) * 2 * 32 * 32 * 4  # measured: the difference is 0.67 of this
    assert kept[0] - kept[1] >= 0.6 * scores


@pytest.mark.parametrize("backprop", ["reversible", "exact"])
def test_video_swin_chunked_window_attention_lowers_the_memory_free_backward_peak(backprop):
    from tests.helpers import live_peak_bytes

    # 4×16×16 tokens in 8 windows of 2×8×8: the attention scores outweigh the rest of a block, as at paper scale
    ref = tiny_video_swin(depths=(2,), stochastic_depth_prob=0.0, embed_dim=16, window_size=[2, 8, 8])
    video = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    peaks = []
    for options in ({}, {"window_chunk": 1}):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=1.0, beta=0.25, backprop=backprop, **options)
        peaks.append(live_peak_bytes(lambda: _loss(model, video).backward()))
    scores = 8 * 2 * 128 * 128 * 4  # one block's fp32 attention scores, all windows (1 MiB)
    assert peaks[0] - peaks[1] >= 1.5 * scores, peaks


# A memory-free stage runs a window-chunked block's branches as pieces gathered from the stream
# (revtal.reversible.pieces): the attention by chunks of whole windows, the MLP by chunks of tokens. 3×10×11 tokens
# in windows of 2×4×4: every axis is padded, and the shifted blocks mask
PADDED_VIDEO = torch.randn(1, 3, 6, 40, 44, generator=torch.Generator().manual_seed(6))


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("train", [False, True])
def test_video_swin_branches_by_pieces_are_bitwise_the_library_without_grad(precision, train, monkeypatch):
    from revtal.reversible import function

    calls = _count_calls(monkeypatch, function, "g_by_pieces")
    for video in (CHUNK_VIDEO, PADDED_VIDEO):
        ref = tiny_video_swin().train(train)  # stochastic depth 0.2: the pieces draw the library's masks
        model = revtal.convert(copy.deepcopy(ref), "original", window_chunk=2).train(train)
        with torch.no_grad():
            _assert_same_forward(model, ref, precision, video)
    assert len(calls) == 2 * 8  # two branches of four blocks, two videos


@pytest.mark.parametrize("video", [CHUNK_VIDEO, PADDED_VIDEO], ids=["unpadded", "padded"])
def test_memory_free_backward_by_pieces_matches_the_vanilla_gradients(video, monkeypatch):
    from revtal.reversible import function

    ref = tiny_video_swin()
    calls = _count_calls(monkeypatch, function, "backward_by_pieces")
    results = []
    for options in ({"backprop": "vanilla"}, {"backprop": "reversible", "window_chunk": 2}):
        model = revtal.convert(copy.deepcopy(ref), "dr2net", alpha=0.5, beta=0.5, **options)
        torch.manual_seed(3)  # the same stochastic-depth draws
        _loss(model, video).backward()
        results.append(grads(model))
    assert len(calls) == 8
    # float32, (α, β) = (0.5, 0.5): measured 4.5e-7 relative (the whole-branch recompute: 4.3e-7)
    assert max_relative_gap(results[1], results[0]) < 1e-5


def test_memory_free_backward_by_pieces_holds_no_stream_sized_tensor_inside_the_branch():
    from tests.helpers import live_peak_bytes

    # one stage of four blocks, 4×8×8 tokens of 48 channels in 16 windows, 2 windows per piece. The whole-branch
    # recompute held the windowed input, the output before its reverse partition and the gathered gradient of the
    # chunks' inputs, and added the stream gradients into a new tensor: measured 32.75 streams of peak (parameters,
    # their gradients and the video are 20 of them); by pieces 29.95
    ref = tiny_video_swin(depths=(4,), stochastic_depth_prob=0.0, embed_dim=48, window_size=[2, 4, 4])
    video = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    stream = 4 * 8 * 8 * 48 * 4
    model = revtal.convert(ref, "re2", backprop="reversible", window_chunk=2)
    peak = live_peak_bytes(lambda: _loss(model, video).backward())
    assert peak <= 31 * stream, peak / stream


# window chunks on unconverted blocks (revtal.reversible.video_swin.chunk_window_attention): a frozen backbone, an
# adapter's backbone and conventional finetuning compute the same attention without converting the blocks
@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("train", [False, True])
def test_chunked_attention_on_unconverted_video_swin_is_bitwise_the_library(precision, train):
    from revtal.reversible.video_swin import chunk_window_attention

    ref = tiny_video_swin().train(train)
    model = copy.deepcopy(ref)
    assert chunk_window_attention(model, 2) == 4
    model.train(train)
    _assert_same_forward(model, ref, precision)
    assert model.state_dict().keys() == ref.state_dict().keys()
    chunk_window_attention(model, None)  # the library's forward again
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_chunked_attention_on_unconverted_video_swin_lowers_the_no_grad_forward_peak():
    # 4×16×16 tokens in 8 windows of 2×8×8: one block's fp32 scores (1 MiB) outweigh the rest of the block
    ref = tiny_video_swin(depths=(2,), stochastic_depth_prob=0.0, embed_dim=16, window_size=[2, 8, 8]).eval()
    video = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    peaks = _no_grad_peaks_without_and_with_chunks(ref, 1, video)
    scores = 8 * 2 * 128 * 128 * 4
    assert peaks[0] - peaks[1] >= 1.5 * scores, peaks


def test_chunked_attention_without_recompute_keeps_every_chunks_scores_and_matches_the_library_gradients():
    from revtal.reversible.video_swin import chunk_window_attention

    # recompute=False (conventional finetuning): nothing is recomputed, so backward keeps the scores of every chunk,
    # as the library does (within the bias-gradient summation order); the checkpointed chunks keep none of them
    ref = tiny_video_swin(stochastic_depth_prob=0.0)
    plain, recomputed = copy.deepcopy(ref), copy.deepcopy(ref)
    chunk_window_attention(plain, 2, recompute=False)
    chunk_window_attention(recomputed, 2, recompute=True)
    kept = [saved_bytes(lambda m=m: _loss(m, CHUNK_VIDEO), m) for m in (ref, plain, recomputed)]
    scores = 2 * (9 + 4) * 2 * 32 * 32 * 4
    assert kept[1] >= kept[0] - 0.05 * scores and kept[1] - kept[2] >= 0.6 * scores, kept
    results = []
    for model in (ref, plain):
        model.zero_grad()
        _loss(model, CHUNK_VIDEO).backward()
        results.append(grads(model))
    assert max_relative_gap(results[1], results[0]) < 1e-5


# 4×16×16 tokens in windows of 2×2×2 (128 windows): the scores are small beside the projections and the MLP
SMALL_WINDOW_VIDEO = torch.randn(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
STREAM_BYTES = 4 * 16 * 16 * 16 * 4  # one fp32 stream of the stage (embed_dim 16)


def _no_grad_peaks_without_and_with_chunks(ref, window_chunk: int, video) -> list[int]:
    """Live-bytes peaks of ``ref``'s no-grad forward on ``video``, unconverted, as the library computes it and
    with :func:`chunk_window_attention` at ``window_chunk``."""
    from revtal.reversible.video_swin import chunk_window_attention
    from tests.helpers import live_peak_bytes

    chunked = copy.deepcopy(ref)
    chunk_window_attention(chunked, window_chunk)
    peaks = []
    for model in (ref, chunked):
        with torch.no_grad():
            peaks.append(live_peak_bytes(lambda m=model: m(video)))
    return peaks


def _peaks_without_and_with_window_chunks(backprop: str, mlp_ratio: float) -> list[int]:
    """Live-bytes peaks of a training step of a one-stage tiny Video Swin (128 windows) converted for ``backprop``,
    with the library's attention and MLP and with ``window_chunk=4``."""
    from tests.helpers import live_peak_bytes

    ref = tiny_video_swin(depths=(2,), stochastic_depth_prob=0.0, embed_dim=16, window_size=[2, 2, 2],
                          mlp_ratio=mlp_ratio)
    method, options = ("original", {}) if backprop == "checkpoint" else ("dr2net", {"alpha": 1.0, "beta": 0.25})
    peaks = []
    for window_chunk in (None, 4):
        model = revtal.convert(copy.deepcopy(ref), method, backprop=backprop, window_chunk=window_chunk, **options)
        peaks.append(live_peak_bytes(lambda: _loss(model, SMALL_WINDOW_VIDEO).backward()))
    return peaks


@pytest.mark.parametrize("backprop", ["reversible", "checkpoint"])
def test_video_swin_window_chunks_run_the_mlp_by_token_chunks_in_the_recompute(backprop):
    # MLP hidden 8·C per token: the recompute of one block held fc1's and GELU's outputs for every token (measured
    # 39 streams of peak for reversible, 43 for checkpoint, with or without window chunks); by chunks of 4 windows'
    # tokens under checkpointing, 18.6 and 16.3
    peaks = _peaks_without_and_with_window_chunks(backprop, mlp_ratio=8.0)
    assert peaks[1] <= 0.6 * peaks[0], [p / STREAM_BYTES for p in peaks]


@pytest.mark.parametrize("backprop", ["reversible", "checkpoint"])
def test_video_swin_window_chunks_project_qkv_and_output_inside_each_chunk(backprop):
    # qkv for every window (3 streams) and the per-chunk gradients of q, k and v gathered into full-size buffers
    # were held in the attention's backward (measured: chunks computing only the scores kept 0.95 of the
    # unchunked peak for reversible, 0.90 for checkpoint; with the projections inside each chunk 0.71 and 0.65;
    # with the chunks split off the input rather than sliced, so that their gradients are gathered once, 0.64 and
    # 0.61)
    peaks = _peaks_without_and_with_window_chunks(backprop, mlp_ratio=1.0)
    assert peaks[1] <= {"reversible": 0.68, "checkpoint": 0.63}[backprop] * peaks[0], [p / STREAM_BYTES for p in peaks]


def test_chunked_mlp_on_unconverted_video_swin_lowers_the_no_grad_forward_peak():
    ref = tiny_video_swin(depths=(2,), stochastic_depth_prob=0.0, embed_dim=16, window_size=[2, 2, 2],
                          mlp_ratio=8.0).eval()
    peaks = _no_grad_peaks_without_and_with_chunks(ref, 4, SMALL_WINDOW_VIDEO)
    hidden = 8 * STREAM_BYTES  # fc1's output for every token
    assert peaks[0] - peaks[1] >= 0.9 * hidden, [p / STREAM_BYTES for p in peaks]
