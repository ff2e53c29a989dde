"""What a memory-free convolutional network keeps between its reversible runs: an ordinary block reached by a loop
over its stage is checkpointed as when the stage runs it."""

import copy

import torch
from torch import nn

import revtal
from revtal.utils.memory import saved_bytes
from tests.test_convert_resnet import sample, tiny


def test_a_loop_over_a_memory_free_stage_stores_what_calling_the_stage_stores():
    # pytorchvideo's ResStage (SlowFast) and timm's models run their blocks in a loop over the stage
    model = revtal.convert(tiny("bottleneck_2d").train(), "re2")
    x = model.stem(sample("bottleneck_2d")).detach()
    x = model.layer1(x).detach().requires_grad_(True)

    def looped():
        h = x
        for step in model.layer2:
            h = step(h)
        return h.square().sum()

    called = saved_bytes(lambda: model.layer2(x).square().sum(), model)
    assert saved_bytes(looped, model) == called
    with torch.no_grad():
        h = x
        for step in model.layer2:
            h = step(h)
        assert torch.equal(h, model.layer2(x))


def test_re2_stage_output_is_one_of_the_two_tensors_it_keeps():
    # Re²TAL's output (x_n + y_n)/2 is saved in place of x_n: the next layer, saving its input, adds nothing
    model = revtal.convert(tiny("basic_2d").train(), "re2")
    x = model.stem(sample("basic_2d")).detach().requires_grad_(True)
    after = nn.Conv2d(8, 8, 1)
    kept = saved_bytes(lambda: after(model.layer1(x)).sum(), model, after)
    assert kept == 2 * x.numel() * x.element_size()


def test_re2_output_reconstruction_keeps_float64_gradient_parity():
    torch.manual_seed(0)
    reference = tiny("basic_2d").double().train()
    x = sample("basic_2d").double().requires_grad_(True)
    grads = {}
    for backprop in ("vanilla", "reversible"):
        model = revtal.convert(copy.deepcopy(reference), "re2", backprop=backprop)
        model.head(model.layer2(model.layer1(model.stem(x))).flatten(2).mean(-1)).square().sum().backward()
        grads[backprop] = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
        x.grad = None
    for a, b in zip(grads["reversible"], grads["vanilla"]):
        assert ((a - b).norm() / b.norm().clamp_min(1e-30)).item() < 1e-10


def _stage_outputs(backbone, stages, video):
    """Bytes of each stage's output in a no-grad forward (the plain path, where stage modules run as modules)."""
    sizes = []

    def record(module, inputs, output):
        sizes.extend(o.numel() * o.element_size() for o in (output if isinstance(output, list) else [output]))

    handles = [s.register_forward_hook(record) for s in stages]
    with torch.no_grad():
        backbone(video)
    for handle in handles:
        handle.remove()
    return sizes


def test_memory_free_slowfast_keeps_the_clip_the_stem_outputs_and_two_streams_per_stage():
    # lateral fusions and stage-entry blocks are recomputed from the stage outputs the runs keep anyway; the stems
    # (with the first fusion) from the clip, their outputs kept so that backward recomputes one part at a time
    from revtal.backbones import build

    torch.manual_seed(0)
    backbone = revtal.convert(build("slowfast_r50", stem_dim_outs=(8, 1)).train(), "re2")
    video = torch.randn(2, 3, 8, 32, 32)
    stages = [pathway for k in range(1, 5) for pathway in backbone.net.blocks[k].multipathway_blocks]
    streams = 2 * sum(_stage_outputs(backbone, stages, video))
    stems = sum(_stage_outputs(backbone, [backbone.net.blocks[0]], video))
    kept = saved_bytes(lambda: backbone(video).sum(), backbone)
    assert kept == streams + stems + video.numel() * video.element_size()


def test_memory_free_video_resnet_keeps_only_the_clip_and_two_streams_per_stage():
    from revtal.backbones import build

    torch.manual_seed(0)
    backbone = revtal.convert(build("r3d_18").train(), "re2")
    video = torch.randn(1, 3, 4, 32, 32)
    stages = [getattr(backbone.net, name) for name in backbone.stages]
    streams = 2 * sum(_stage_outputs(backbone, stages, video))
    kept = saved_bytes(lambda: backbone(video).sum(), backbone)
    assert kept == streams + video.numel() * video.element_size()


def test_slowfast_regions_update_batchnorm_statistics_once_and_keep_gradients():
    from revtal.backbones import build

    torch.manual_seed(0)
    reference = build("slowfast_r50", stem_dim_outs=(8, 1)).double().train()
    video = torch.randn(2, 3, 8, 32, 32, dtype=torch.float64)
    results = {}
    for backprop in ("vanilla", "reversible"):
        model = revtal.convert(copy.deepcopy(reference), "re2", backprop=backprop)
        model(video).square().sum().backward()
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
        results[backprop] = (
            [p.grad for p in model.parameters()],
            [b for m in norms for b in (m.running_mean, m.running_var)],
            [int(m.num_batches_tracked) for m in norms],
        )
    (g_rev, stats_rev, counts_rev), (g_van, stats_van, counts_van) = results["reversible"], results["vanilla"]
    assert counts_rev == counts_van == [1] * len(counts_van)
    assert max((a - b).abs().max().item() for a, b in zip(stats_rev, stats_van)) < 1e-12
    assert max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(g_rev, g_van)) < 1e-9


def test_reconstruction_check_holds_no_float64_copy_of_the_activation(monkeypatch):
    # the first-step check compares a stage input with its reconstruction; at paper scale three float64 copies of a
    # stream were the step's peak (SlowFast-101, 512×224²): the errors are accumulated one piece at a time
    from revtal.bench.plan import LiveBytes
    from revtal.reversible import coupling

    monkeypatch.setattr(coupling, "_ERROR_CHUNK", 1 << 12, raising=False)
    truth = torch.randn(1 << 18)
    estimate = truth + 1e-3 * torch.randn(1 << 18)
    meter = LiveBytes()
    meter.track(truth), meter.track(estimate)
    inputs = meter.current
    with meter:
        relative, gap = coupling.error_summary(estimate, truth)
    assert meter.peak - inputs < 0.25 * truth.numel() * truth.element_size()  # was 6×: three float64 copies
    d = estimate.double() - truth.double()
    assert abs(relative - (d.norm() / truth.double().norm()).item()) < 1e-12 * relative
    assert gap == d.abs().max().item()
    assert coupling.relative_error(torch.tensor([float("nan")]), torch.ones(1)) == float("inf")


def _convolution_runs(backbone, video):
    """How many times each convolution of ``backbone`` runs in one training step (forward and backward)."""
    runs = {}

    def count(module, inputs, output):
        runs[module] = runs.get(module, 0) + 1

    handles = [m.register_forward_hook(count) for m in backbone.modules() if isinstance(m, nn.Conv3d)]
    backbone(video).square().sum().backward()
    for handle in handles:
        handle.remove()
    return [runs.get(m, 0) for m in backbone.modules() if isinstance(m, nn.Conv3d)]


def test_memory_free_slowfast_runs_every_convolution_once_in_forward_and_once_in_recompute():
    # the lateral fusion changes only the slow pathway: the fast pathway's region must not run it again (it ran each
    # lateral convolution four times per step)
    from revtal.backbones import build

    torch.manual_seed(0)
    backbone = revtal.convert(build("slowfast_r50", stem_dim_outs=(8, 1)).train(), "re2")
    assert _convolution_runs(backbone, torch.randn(1, 3, 8, 32, 32)) == [2] * 110


def test_memory_free_video_resnet_runs_every_convolution_once_in_forward_and_once_in_recompute():
    from revtal.backbones import build

    torch.manual_seed(0)
    backbone = revtal.convert(build("r3d_18").train(), "re2")
    assert _convolution_runs(backbone, torch.randn(1, 3, 4, 32, 32)) == [2] * 20
