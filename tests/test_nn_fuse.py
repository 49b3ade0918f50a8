"""t2ifast.nn.DeconvBNAct / UpBlock and t2ifast.fuse(): same state_dict, outputs, gradients and running
statistics as the torch module sequences they replace."""

import copy
import importlib

import pytest
import torch
from kernel_testing import kernel_backends
from torch import nn

import t2ifast
from t2ifast.nn import DeconvBNAct, FusedSequential, UpBlock

# the package (t2ifast.ops.deconv_bn_act is also the name of its function)
deconv_bn_act_ops = importlib.import_module("t2ifast.ops.deconv_bn_act")
BACKENDS = ["reference", *kernel_backends("bn_act_train", "cpu")[:1]]  # Triton kernels: tests/test_deconv_bn_act.py


def _randomize(model):
    """Non-default BatchNorm parameters and running statistics everywhere (the init values hide mistakes)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand_like(module.weight) + 0.5)
                module.bias.copy_(torch.randn_like(module.bias) * 0.5)
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
    return model


def _step(model, x, seed):
    """Output, gradients of the input and of every parameter, and the buffers after one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    params = list(model.parameters())
    grads = torch.autograd.grad(out, [x, *params], grad)
    buffers = [b.clone() for b in model.buffers()]
    return [out.detach(), *grads, *buffers]


def _assert_same_steps(fused, reference, inputs, backend, rtol=1e-4, atol=1e-5):
    for seed, x in enumerate(inputs):
        with t2ifast.backend(backend):
            got = _step(fused, x, seed)
        expected = _step(reference, x, seed)
        assert len(got) == len(expected)
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=index, s=seed: f"step {s}, {i}: {m}")


def _sequential_block(c_in, c_out, act=None, **conv):
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, bias=False, **conv), nn.BatchNorm2d(c_out), act or nn.ReLU()
    )


# --- DeconvBNAct ----------------------------------------------------------------------------------


def test_deconv_bn_act_state_dict_is_that_of_the_sequential():
    layer = DeconvBNAct(8, 4, 4, stride=2, padding=1)
    sequential = _randomize(_sequential_block(8, 4, stride=2, padding=1))
    assert list(layer.state_dict()) == [
        "0.weight",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert list(layer.state_dict()) == list(sequential.state_dict())
    layer.load_state_dict(sequential.state_dict())  # strict: same keys and shapes
    back = _sequential_block(8, 4, stride=2, padding=1)
    back.load_state_dict(layer.state_dict())
    for key, value in sequential.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("act", "module"), [("relu", nn.ReLU()), ("leaky_relu", nn.LeakyReLU(0.2)), ("glu", nn.GLU(dim=1))]
)
def test_deconv_bn_act_trains_like_the_sequential(backend, act, module):
    torch.manual_seed(0)
    reference = _randomize(_sequential_block(6, 8, module, stride=2, padding=1))
    layer = DeconvBNAct(6, 8, 4, stride=2, padding=1, act=act, negative_slope=0.2)
    layer.load_state_dict(reference.state_dict())
    inputs = [torch.randn(3, 6, 5, 5) + step for step in range(3)]
    _assert_same_steps(layer, reference, inputs, backend)
    assert int(layer.bn.num_batches_tracked) == 3
    reference.eval()
    layer.eval()
    _assert_same_steps(layer, reference, [torch.randn(2, 6, 5, 5)], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cumulative_moving_average_momentum_none(backend):
    torch.manual_seed(1)
    reference = _randomize(
        nn.Sequential(nn.ConvTranspose2d(4, 6, 3, bias=True), nn.BatchNorm2d(6, momentum=None), nn.ReLU())
    )
    layer = DeconvBNAct(4, 6, 3, bias=True, momentum=None)
    layer.load_state_dict(reference.state_dict())
    _assert_same_steps(layer, reference, [torch.randn(2, 4, 3, 3) * (step + 1) for step in range(3)], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_untracked_statistics_use_batch_statistics_in_eval(backend):
    torch.manual_seed(2)
    reference = nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, bias=False), nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU()
    )
    layer = DeconvBNAct(4, 6, 3, track_running_stats=False)
    layer.load_state_dict(reference.state_dict())
    reference.eval()
    layer.eval()
    _assert_same_steps(layer, reference, [torch.randn(2, 4, 3, 3)], backend)


def test_from_modules_shares_parameters():
    block = _sequential_block(4, 6)
    layer = DeconvBNAct.from_modules(block[0], block[1], block[2])
    assert layer.conv.weight is block[0].weight and layer.bn.running_mean is block[1].running_mean
    with pytest.raises(ValueError, match="activation must be"):
        DeconvBNAct.from_modules(block[0], block[1], nn.Tanh())
    with pytest.raises(ValueError, match="act must be one of"):
        DeconvBNAct(4, 6, 3, act="gelu")


# --- UpBlock --------------------------------------------------------------------------------------


class AttnGANGLU(nn.Module):
    """AttnGAN's own GLU module, as in its model.py."""

    def forward(self, x):
        nc = x.size(1) // 2
        return x[:, :nc] * torch.sigmoid(x[:, nc:])


def _attngan_up_block(in_planes, out_planes):
    """upBlock of AttnGAN's model.py, with nn.GLU(dim=1) for its GLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_planes, out_planes * 2, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_planes * 2),
        nn.GLU(dim=1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_up_block_matches_attngan_up_block(backend):
    torch.manual_seed(3)
    reference = _randomize(_attngan_up_block(8, 4))
    block = UpBlock(8, 4)
    assert list(block.state_dict()) == list(reference.state_dict())
    block.load_state_dict(reference.state_dict())
    _assert_same_steps(block, reference, [torch.randn(2, 8, 5, 3) for _ in range(2)], backend)
    reference.eval()
    block.eval()
    _assert_same_steps(block, reference, [torch.randn(2, 8, 4, 4)], backend)
    # nn.GLU(dim=1) computes AttnGAN's GLU
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(nn.GLU(dim=1)(x), AttnGANGLU()(x))


def _saved_bytes(module, x, backend):
    """Bytes of the distinct storages autograd saves in module(x), other than x's, the parameters' and buffers'."""
    exclude = {t.untyped_storage().data_ptr() for t in (x, *module.parameters(), *module.buffers())}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with t2ifast.backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x)
    return sum(saved.values())


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_fused_blocks_save_less_for_backward(backend):
    """Issue 4's memory target, per block against the module sequence: the DCGAN block keeps the conv output y
    only (the reference's ReLU also saves its output: half as much kept), the up-block keeps y and its input x
    (the reference also keeps the 4x larger upsampled tensor and BatchNorm's output: a third as much)."""
    torch.manual_seed(6)
    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    deconv = DeconvBNAct(16, 8, 4, 2, 1)
    # (both also keep a mean and an invstd per channel: bytes, beside the maps)
    assert _saved_bytes(deconv, x, backend) / _saved_bytes(deconv, x, "reference") == pytest.approx(1 / 2, abs=0.01)
    up = UpBlock(16, 8)
    assert _saved_bytes(up, x, backend) / _saved_bytes(up, x, "reference") == pytest.approx(1 / 3, abs=0.01)


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_eval_folding_is_reused_only_while_its_tensors_are_unchanged(backend, monkeypatch):
    folds = []
    fold = deconv_bn_act_ops.fold_batch_norm
    monkeypatch.setattr(deconv_bn_act_ops, "fold_batch_norm", lambda *a, **k: folds.append(1) or fold(*a, **k))
    torch.manual_seed(7)
    reference = _randomize(_sequential_block(6, 4, stride=2, padding=1)).eval()
    block = DeconvBNAct(6, 4, 4, 2, 1).eval()
    block.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 3, 3)

    def check(expected_folds):
        with torch.no_grad(), t2ifast.backend(backend):
            got = block(x)
        torch.testing.assert_close(got, reference(x), rtol=1e-5, atol=1e-5)
        assert len(folds) == expected_folds

    check(1)
    check(1)  # nothing changed: the folding is reused
    with torch.no_grad():
        for bn in (block.get_submodule("1"), reference[1]):
            bn.running_var.mul_(1.5)
    check(2)
    with torch.no_grad():
        for conv in (block.get_submodule("0"), reference[0]):
            conv.weight.add_(0.1)
    check(3)
    reference.load_state_dict(_randomize(_sequential_block(6, 4, stride=2, padding=1)).state_dict())
    block.load_state_dict(reference.state_dict())
    check(4)
    # autograd needs the folding: never reused when a source requires grad
    with t2ifast.backend(backend):
        got_grads = torch.autograd.grad(block(x).square().sum(), list(block.parameters()))
    expected_grads = torch.autograd.grad(reference(x).square().sum(), list(reference.parameters()))
    assert len(folds) == 5
    for got, expected in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- fuse() ---------------------------------------------------------------------------------------


class ReedGenerator(nn.Module):
    """The GAN-INT-CLS generator of Reed et al. (2016): text projection, then the DCGAN 64x64 stack
    ConvTranspose 4x4: 1 -> 4 -> 8 -> 16 -> 32 -> 64 with BatchNorm + ReLU after each but the last (tanh)."""

    def __init__(self, nz=10, embedding=12, projected=6, ngf=4):
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(embedding, projected), nn.LeakyReLU(0.2))
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz + projected, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, inputs):
        z, text = inputs[:, :10], inputs[:, 10:]
        h = torch.cat([z, self.projection(text)], dim=1)
        return self.main(h[:, :, None, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuse_dcgan_generator(backend):
    torch.manual_seed(4)
    model = _randomize(ReedGenerator())
    original_state = copy.deepcopy(model.state_dict())
    fused, report = t2ifast.fuse(model)
    assert len(report) == 4
    assert all(run.container == "main" and run.kind == "ConvTranspose2d+BatchNorm2d+ReLU" for run in report)
    assert [run.children for run in report] == [("0", "1", "2"), ("3", "4", "5"), ("6", "7", "8"), ("9", "10", "11")]
    assert "4 run(s) fused" in str(report)
    assert isinstance(fused.main, FusedSequential) and type(model.main) is nn.Sequential  # not in place
    assert list(fused.state_dict()) == list(original_state)
    inputs = [torch.randn(4, 22) for _ in range(3)]
    _assert_same_steps(fused, model, inputs, backend, rtol=1e-3, atol=1e-4)  # five BatchNorms deep in float32
    assert not torch.equal(fused.main[1].running_mean, original_state["main.1.running_mean"])  # it trained
    model.eval()
    fused.eval()
    _assert_same_steps(fused, model, [torch.randn(3, 22)], backend, rtol=1e-3, atol=1e-4)
    # checkpoints move both ways
    fresh = ReedGenerator()
    fresh.load_state_dict(fused.state_dict())
    t2ifast.fuse(fresh, inplace=True)[0].load_state_dict(model.state_dict())


def test_fuse_in_place_and_model_that_is_a_sequential():
    model = nn.Sequential(*_sequential_block(4, 6), *_sequential_block(6, 2, nn.LeakyReLU(0.1)), nn.Tanh())
    fused, report = t2ifast.fuse(model, inplace=True)
    assert isinstance(fused, FusedSequential) and len(report) == 2
    assert report[1].act == "leaky_relu" and report[1].negative_slope == pytest.approx(0.1)
    assert fused[0] is model[0]  # the same modules: parameters shared
    assert list(fused.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuse_attngan_initial_stage(backend):
    """AttnGAN's INIT_STAGE_G upsampling path: four up-blocks, each its own nn.Sequential."""
    torch.manual_seed(5)
    model = _randomize(
        nn.ModuleDict({"up": nn.Sequential(*(_attngan_up_block(16 // 2**i, 8 // 2**i) for i in range(3)))})
    )
    fused, report = t2ifast.fuse(model)
    assert len(report) == 3 and all(run.kind == "Upsample+Conv2d+BatchNorm2d+GLU" for run in report)
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 16, 4, 4)
    _assert_same_steps(fused["up"], model["up"], [x, x * 2], backend, rtol=1e-3, atol=1e-4)  # three blocks deep


def test_fuse_leaves_other_runs_alone():
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 4, 3), nn.BatchNorm2d(4), nn.Tanh(),  # no fusable activation
        nn.ConvTranspose2d(4, 4, 3, padding_mode="zeros"), nn.BatchNorm2d(5 - 1), nn.ReLU(),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.GLU(dim=1),
    )  # fmt: skip
    _, report = t2ifast.fuse(model)
    assert [run.children for run in report] == [("3", "4", "5")]
    assert "nothing to fuse" in str(t2ifast.fuse(nn.Sequential(nn.ReLU()))[1])
