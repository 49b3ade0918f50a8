"""``t2ifast.fuse(model)``: run the conv -> BatchNorm -> activation blocks of any model through the fused ops.

Inside every ``nn.Sequential`` of the model it finds the runs

- ``ConvTranspose2d -> BatchNorm2d -> ReLU | LeakyReLU | GLU(dim=1)`` (DCGAN / GAN-INT-CLS generator blocks),
- ``Upsample(nearest) -> Conv2d -> BatchNorm2d -> GLU(dim=1) | ReLU | LeakyReLU`` (AttnGAN / StackGAN up-blocks),

and makes the container a ``FusedSequential``: the same children under the same names (so the model's
state_dict, its keys and its parameters are unchanged and shared), whose forward runs each matched run
through ``t2ifast.ops.deconv_bn_act`` / ``upsample_conv_bn_act`` and every other child as before.
Replacing a run of three children by one module would renumber the container's later children and so
change the model's state_dict keys; keeping the children avoids that.
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from .conv_bn_act import activation_of, deconv_bn_act_forward, upsample_conv_bn_act_forward


@dataclass(frozen=True)
class FusedRun:
    """One fused run: where it is, which children it spans, and what it computes."""

    container: str  # qualified name of the nn.Sequential ("" for the model itself)
    children: tuple  # names of the fused children inside it
    kind: str  # e.g. "ConvTranspose2d+BatchNorm2d+ReLU"
    act: str
    negative_slope: float

    def __str__(self):
        prefix = f"{self.container}." if self.container else ""
        return f"{prefix}[{self.children[0]}..{self.children[-1]}] {self.kind}"


class FuseReport(list):
    """The FusedRun entries, in model order; printing it lists them."""

    def __str__(self):
        if not self:
            return "t2ifast.fuse: nothing to fuse"
        return "\n".join([f"t2ifast.fuse: {len(self)} run(s) fused", *(f"  {run}" for run in self)])


def _is_nearest_upsample(module):
    return (
        isinstance(module, nn.Upsample)
        and module.mode == "nearest"
        and module.size is None
        and module.scale_factor is not None
    )


def _fusable_conv(module, kind):
    return isinstance(module, kind) and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _bn_after(conv, module):
    return isinstance(module, nn.BatchNorm2d) and module.num_features == conv.out_channels


def find_runs(container, container_name=""):
    """The fusable runs among the children of an nn.Sequential."""
    names = list(container._modules)
    modules = list(container._modules.values())
    runs, i = [], 0
    while i < len(modules):
        window = modules[i : i + 4]
        length = 0
        if len(window) >= 3 and _fusable_conv(window[0], nn.ConvTranspose2d) and _bn_after(window[0], window[1]):
            length = 3
        elif (
            len(window) == 4
            and _is_nearest_upsample(window[0])
            and _fusable_conv(window[1], nn.Conv2d)
            and _bn_after(window[1], window[2])
        ):
            length = 4
        spec = activation_of(modules[i + length - 1]) if length else None
        if spec is None:
            i += 1
            continue
        kind = "+".join(type(m).__name__ for m in modules[i : i + length])
        runs.append(FusedRun(container_name, tuple(names[i : i + length]), kind, *spec))
        i += length
    return runs


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose conv -> BatchNorm -> activation runs execute fused; children, names and
    state_dict are those of the nn.Sequential it was made from."""

    def __init__(self, sequential, runs):
        super().__init__(OrderedDict(sequential._modules))
        self.train(sequential.training)
        position = {name: index for index, name in enumerate(self._modules)}
        self.fused_runs = {position[run.children[0]]: run for run in runs}

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            run = self.fused_runs.get(i)
            if run is None:
                x = modules[i](x)
                i += 1
            elif len(run.children) == 3:
                x = deconv_bn_act_forward(x, modules[i], modules[i + 1], run.act, run.negative_slope)
                i += 3
            else:
                x = upsample_conv_bn_act_forward(
                    x, modules[i], modules[i + 1], modules[i + 2], run.act, run.negative_slope
                )
                i += 4
        return x


def fuse(model, inplace=False):
    """Fuse the conv -> BatchNorm -> activation runs of `model` (see the module docstring).

    Returns ``(fused_model, report)``: the model (a deep copy unless ``inplace``; a new root object when
    the model itself is an nn.Sequential with runs) and a FuseReport listing every fused run. Only plain
    ``nn.Sequential`` containers are changed: a subclass may have its own forward.
    """
    if not inplace:
        model = copy.deepcopy(model)
    report = FuseReport()
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Sequential and type(module) is not FusedSequential:
            continue
        runs = find_runs(module, name)
        if not runs:
            continue
        fused = FusedSequential(module, runs)
        report.extend(runs)
        if name == "":
            model = fused
        else:
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, fused)
    return model, report
