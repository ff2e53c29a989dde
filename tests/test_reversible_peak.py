"""What lowers the memory-free modes' backward peak, and that gradients stay those of vanilla autograd: one autograd
node per branch (parameter gradients handed to autograd branch by branch, not held for the whole stage), a video
run clip by clip through the backbone in one step as end-to-end TAL trains, and Swin's patch embedding and merging
recomputed instead of stored between memory-free stages."""

from __future__ import annotations

import copy

import pytest
import torch

import revtal
from revtal.bench.clips import ClipChunks
from tests.helpers import grads, max_relative_gap, tiny_vit


class ClipsAsImages(torch.nn.Module):
    """A tiny image ViT as a clip backbone: (b, C, 1, H, W) -> (b, classes, 1)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, clip):
        return self.net(clip[:, :, 0])[:, :, None]


@pytest.mark.parametrize(
    "method,options,tolerance",
    [
        ("re2", {}, 1e-10),
        ("dr2net", {"alpha": 0.5, "beta": 0.5}, 1e-10),
        # exact arithmetic runs the forward on a 2^-32 grid: vanilla's forward differs by that quantisation
        ("dr2net", {"alpha": 1.0, "beta": 0.25, "backprop": "exact"}, 1e-6),
    ],
)
def test_clip_by_clip_gradients_equal_vanilla_float64(method, options, tolerance):
    reference = tiny_vit(depth=3).double()
    video = torch.randn(2, 3, 4, 16, 16, dtype=torch.float64)  # 4 one-frame clips per sample, 2 per backbone call
    results = []
    for backprop in (options.get("backprop", "reversible"), "vanilla"):
        model = revtal.convert(copy.deepcopy(reference), method, **{**options, "backprop": backprop})
        chunks = ClipChunks(ClipsAsImages(model), frames=1, clip_batch=2)
        (chunks(video) ** 2).sum().backward()
        results.append(grads(model))
    memory_free, vanilla = results
    assert len(memory_free) == len(list(reference.parameters()))
    assert max_relative_gap(memory_free, vanilla) <= tolerance


def test_a_blocks_parameter_gradients_reach_grad_before_the_blocks_below_recompute():
    model = revtal.convert(tiny_vit(depth=3), "re2")
    blocks = model.blocks.blocks()
    events = []
    for index, block in enumerate(blocks):
        block.mlp.fc1.weight.register_post_accumulate_grad_hook(lambda p, index=index: events.append(("grad", index)))
        block.attn.register_forward_hook(
            lambda *_, index=index: events.append(("recompute", index)) if torch.is_grad_enabled() else None
        )
    (model(torch.randn(2, 3, 16, 16)) ** 2).sum().backward()
    # one stage of three blocks (one node per branch): a block's branches done, its gradients are in .grad before
    # the block below recomputes (a single node for the stage delivered them all at the end)
    assert events == [("recompute", 2), ("grad", 2), ("recompute", 1), ("grad", 1), ("recompute", 0), ("grad", 0)]


def test_video_of_clips_is_cut_into_views_and_laid_end_to_end():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, clip):
            seen.append(clip)
            return clip.mean((1, 3, 4))[:, None].expand(-1, 2, -1)  # (b, 2 channels, frames)

    video = torch.arange(2 * 1 * 6 * 1 * 1, dtype=torch.float32).reshape(2, 1, 6, 1, 1)
    out = ClipChunks(Probe(), frames=2, clip_batch=2)(video)
    assert [tuple(c.shape) for c in seen] == [(4, 1, 2, 1, 1), (2, 1, 2, 1, 1)]  # 3 clips, 2 per call
    assert torch.equal(out[:, 0], video[:, 0, :, 0, 0])  # time order kept per sample
    one = torch.zeros(1, 1, 4, 1, 1)
    ClipChunks(Probe(), frames=2, clip_batch=2)(one)
    assert seen[-1].untyped_storage().data_ptr() == one.untyped_storage().data_ptr()  # batch 1: a view, no copy
    with pytest.raises(ValueError, match="not a positive multiple of the clip length 2"):
        ClipChunks(Probe(), frames=2)(torch.zeros(1, 1, 3, 1, 1))


def test_swin_parts_between_memory_free_stages_keep_only_their_input_and_gradients_stay_vanilla():
    from revtal.backbones.backbone import Swin3dBackbone
    from revtal.utils.memory import SavedTensorMeter
    from tests.test_convert_swin import VIDEO, tiny_video_swin

    video = VIDEO.double()
    stage1_output = 2 * 10 * 10 * 8 * 8  # bytes: 2×10×10 tokens × 8 channels, float64
    results = {}
    for backprop in ("reversible", "vanilla", "checkpoint"):
        backbone = Swin3dBackbone(tiny_video_swin(stochastic_depth_prob=0.0).double())
        method = "original" if backprop == "checkpoint" else "re2"
        revtal.convert(backbone, method, backprop=backprop)
        with SavedTensorMeter(backbone, exclude=[video]) as meter:
            loss = (backbone(video) ** 2).sum()
        loss.backward()
        results[backprop] = (meter.bytes, grads(backbone))
    assert max_relative_gap(results["reversible"][1], results["vanilla"][1]) <= 1e-10
    # patch embedding: nothing beyond the video; patch merging: its input only (was: norm input + projection input)
    assert results["reversible"][0] <= results["checkpoint"][0] - 2 * stage1_output


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_backward_overwrites_the_streams_it_owns_and_never_the_stage_outputs(monkeypatch, beta):
    """y_{i-1} = x_i − G(x_{i-1}) is written over x_i (one stream fewer beside each branch's backward), except where
    x_i is a tensor the stage returned: a layer above may hold it."""
    from revtal.reversible.coupling import FloatArithmetic

    overwrites = []
    recover_y = FloatArithmetic.recover_y

    def recording(self, x, g, tape, overwrite=False):
        overwrites.append(overwrite)
        return recover_y(self, x, g, tape, overwrite)

    monkeypatch.setattr(FloatArithmetic, "recover_y", recording)
    reference = tiny_vit(depth=3).double()
    model = revtal.convert(copy.deepcopy(reference), "dr2net", alpha=0.5, beta=beta, backprop="reversible")
    stage = revtal.reversible_stages(model)[0]
    held = []
    # keep what the stage returns, as a layer above that saved it for its own backward would
    stage.register_forward_hook(lambda module, args, out: held.extend(t.detach().clone() for t in _tensors(out)))
    outputs = []
    stage.register_forward_hook(lambda module, args, out: outputs.extend(_tensors(out)))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    (model(x) ** 2).sum().backward()
    # 6 branches, top first: x_n is a stage output, and for β = 1 x_{n-1} = y_n is one too
    assert overwrites == ([False, False] if beta == 1.0 else [False, True]) + [True] * 4
    assert all(torch.equal(out, copy) for out, copy in zip(outputs, held))  # the outputs were never written over
    vanilla = revtal.convert(copy.deepcopy(reference), "dr2net", alpha=0.5, beta=beta, backprop="vanilla")
    (vanilla(x) ** 2).sum().backward()
    assert max_relative_gap(grads(model), grads(vanilla)) <= 1e-10


def _tensors(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]


class _TanhScale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return torch.tanh(x) * self.w


@pytest.mark.parametrize("coupling,streams", [
    (("re2", 0.0, 1.0, "duplicate", "mean"), 8),  # output (x_n + y_n)/2: y_n's own output is unused
    (("dr2net", 1.0, 0.5, "scaled", "last"), 8),  # output x_n: y_n unused
])
def test_an_unused_stream_output_gets_no_zero_gradient_in_backward(coupling, streams):
    from revtal.reversible.coupling import Coupling
    from revtal.reversible.function import Branch
    from revtal.reversible.stage import ReversibleStage
    from tests.helpers import live_peak_bytes

    # autograd used to materialise a stream-sized zero gradient for the unused output and hold it through the top
    # node's backward, plus a sum with it (measured: 10 streams for re2, 9 for dr2net; now 8 for both)
    _, alpha, beta, input_mode, output_mode = coupling
    torch.manual_seed(0)
    stage = ReversibleStage([_TanhScale() for _ in range(2)], lambda b, c: [Branch(b, b)],
                            Coupling(alpha, beta, input_mode, output_mode), backprop="reversible")
    n = 1 << 18
    x = torch.randn(n, requires_grad=True)
    loss = stage(x).sum()
    assert live_peak_bytes(lambda: loss.backward()) <= (streams + 0.1) * 4 * n
    reference = ReversibleStage(copy.deepcopy(list(stage.children())), lambda b, c: [Branch(b, b)],
                                Coupling(alpha, beta, input_mode, output_mode), backprop="vanilla")
    x_ref = x.detach().clone().requires_grad_(True)
    reference(x_ref).sum().backward()
    assert max_relative_gap([x.grad, *grads(stage)], [x_ref.grad, *grads(reference)]) < 1e-6


def test_the_finite_gradient_check_reads_the_gradient_piece_by_piece(monkeypatch):
    from revtal.reversible import coupling
    from tests.helpers import live_peak_bytes

    # isfinite of a whole stage-input gradient made a float and three bool tensors of its size (1.75 streams at the
    # end of a stage's backward in revtal plan: Video Swin-T's step peak at 512×224² with window chunks)
    monkeypatch.setattr(coupling, "_ERROR_CHUNK", 1 << 12)
    grad = torch.randn(1 << 18)
    assert live_peak_bytes(lambda: coupling.all_finite(grad)) - grad.nbytes <= 4 * 4 * (1 << 12)
    # on this CPU the whole-tensor check holds three bool tensors of its size (the plan's CUDA rules: also a float)
    assert live_peak_bytes(lambda: torch.isfinite(grad).all()) - grad.nbytes >= 0.7 * grad.nbytes
    assert bool(coupling.all_finite(grad))
    for position, value in ((0, float("nan")), ((1 << 18) - 1, float("inf")), (5000, -float("inf"))):
        bad = grad.clone()
        bad[position] = value
        assert not bool(coupling.all_finite(bad))


@pytest.mark.parametrize("input_mode,beta", [("duplicate", 1.0), ("scaled", 0.5)])
def test_the_stage_input_gradient_written_over_the_owned_gradient_is_the_same_sum(input_mode, beta):
    from revtal.reversible.coupling import Coupling

    c = Coupling(0.0, beta, input_mode)
    grad_x, grad_y = torch.randn(1000), torch.randn(1000)
    expected = c.input_gradient(grad_x, grad_y)
    owned = grad_x.clone()
    got = c.input_gradient(owned, grad_y, overwrite=True)
    assert got.data_ptr() == owned.data_ptr() and torch.equal(got, expected)
    assert c.input_gradient(grad_x, None) is grad_x


def test_a_float_reconstruction_check_keeps_a_sixteenth_of_the_stage_input():
    from revtal.utils.memory import saved_bytes

    # the check kept a whole copy of the stage input beside the stage's streams (Video Swin-T at 512×224²: 294 MiB
    # in stage 1, where the first step's check runs); float streams now keep every 16th element
    model = revtal.convert(tiny_vit(depth=2, dim=64, img=64), "dr2net", alpha=0.5, beta=0.5)
    stage = revtal.reversible_stages(model)[0]
    x = torch.randn(2, 3, 64, 64)
    stream = 2 * (1 + 64) * 64 * 4  # (cls + 8×8 patches) tokens × 64 channels, float32
    plain = saved_bytes(lambda: (model(x) ** 2).sum(), model)
    stage.verify_next_backward()
    loss = (model(x) ** 2).sum()
    stage.verify_next_backward()
    verified = saved_bytes(lambda: (model(x) ** 2).sum(), model)
    assert verified - plain <= stream / 16 + 64, (verified - plain) / stream
    stage.verify_next_backward(whole=True)  # a measurement of the error (error maps, self-check): all of it
    assert saved_bytes(lambda: (model(x) ** 2).sum(), model) - plain >= stream
    loss.backward()
    check = stage.last_check
    assert check is not None and 0 <= check.relative_error < 1e-5


def test_a_re2_stage_forward_holds_no_copy_of_a_stream():
    from revtal.reversible.coupling import Coupling
    from revtal.reversible.function import Branch
    from revtal.reversible.stage import ReversibleStage
    from tests.helpers import live_peak_bytes

    # at β = 1, y_i = x_{i-1} is the tensor itself (1·x was a copy), and the combined output (x_n + y_n)/2 is halved
    # in place (0.5·(x_n + y_n) held the sum beside it): measured 5 streams beside the input before, 3 now
    torch.manual_seed(0)
    stage = ReversibleStage([_TanhScale() for _ in range(2)], lambda b, c: [Branch(b, b)],
                            Coupling(0.0, 1.0, "duplicate", "mean"), backprop="reversible")
    n = 1 << 18
    x = torch.randn(n, requires_grad=True)
    assert live_peak_bytes(lambda: stage(x)) <= (1 + 3 + 0.1) * 4 * n
