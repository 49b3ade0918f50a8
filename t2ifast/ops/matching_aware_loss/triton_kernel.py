"""Triton kernel of the matching-aware loss, entered through ``torch.library.triton_op`` so that
``torch.compile`` sees inside it. It follows the CUDA kernel: each logit is read once, its loss enters a
sum and its gradient is written in the same pass, so backward only scales what is saved.

Work split: the three pair groups are laid end to end, ``[real | wrong | fake]``, and this index space is
cut into contiguous chunks, one per program. `grid` sizes it: ``ceil(total / ELEMENTS_PER_PROGRAM)``
programs, at most ``PROGRAMS_PER_SM`` per SM (`sm_count`), each chunk a multiple of ``BLOCK``.

Final values: training sizes (up to ``ELEMENTS_PER_PROGRAM`` logits in all) run as one program, which
writes the loss and terms itself: one launch. With more programs, each writes its three group sums (in the
accumulation type: float32, float64 for float64 inputs) to ``partials[program, group]`` and a second
one-program kernel sums them in program order and writes the values. A second launch rather than "last
program done" (an atomic counter): the counter would need zeroing before every launch, an extra operation
anyway. No float atomics anywhere, so a given input on a given device gives the same bits on every run.
"""

import functools
import struct

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .reference import negative_weight

BLOCK = 1024  # elements per vector step
ELEMENTS_PER_PROGRAM = 16 * BLOCK  # up to this many logits in all: one program, one launch
PROGRAMS_PER_SM = 4
INTERPRETER_SM_COUNT = 4  # what `sm_count` says for CPU tensors (the interpreter has no SMs)
PARTIALS_BLOCK = 512  # partial sums the finish kernel loads per step
NUM_GROUPS = 3


@functools.cache
def _cuda_sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device):
    """The SM count of `device` (asked once per device); a fixed stand-in on CPU, so the grid logic runs
    and is tested under TRITON_INTERPRET=1."""
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _cdiv(a, b):
    return (a + b - 1) // b  # plain arithmetic: also on the symbolic sizes torch.compile traces with


def grid(total, sms):
    """(programs, chunk) for `total` logits: chunk (a multiple of BLOCK) elements per program, programs *
    chunk >= total, no program without elements, between 1 and PROGRAMS_PER_SM * sms programs."""
    wanted = min(max(_cdiv(total, ELEMENTS_PER_PROGRAM), 1), PROGRAMS_PER_SM * sms)
    chunk = max(_cdiv(_cdiv(total, wanted), BLOCK), 1) * BLOCK  # not 0 when all three groups are empty
    return max(_cdiv(total, chunk), 1), chunk


def _split_float32(x):
    """x as hi + lo with hi = x rounded to float32 and lo the rest. Compiled Triton passes a Python float
    as a float32 argument; the kernel adds the two in its accumulation type, so float64 inputs see the
    float64 target (torch.compile passes fp64 arguments, which add up to x exactly too)."""
    if type(x) is not float:  # a symbolic float under torch.compile: already passed as fp64
        return x, 0.0
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, x - hi


@triton.jit
def _group_sum(s_ptr, grad_ptr, begin, n, chunk_begin, chunk_end, target, AVERAGE: tl.constexpr, BLOCK: tl.constexpr,
               ACC: tl.constexpr):  # fmt: skip
    """Sum of BCE(logit, target) over the part of one group (starting at `begin` in [real | wrong | fake])
    that [chunk_begin, chunk_end) covers; writes its gradients (sigmoid(x) - target) * scale."""
    first = tl.minimum(tl.maximum(chunk_begin - begin, 0), n)
    last = tl.minimum(tl.maximum(chunk_end - begin, 0), n)
    scale = _scale(n, AVERAGE, ACC)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(first, last, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < last
        x = tl.load(s_ptr + offsets, mask=mask, other=0.0).to(ACC)
        e = tl.exp(-tl.abs(x))  # in (0, 1]: neither softplus nor sigmoid overflows
        softplus = tl.maximum(x, 0.0) + tl.log(1.0 + e)
        acc += tl.where(mask, softplus - target * x, 0.0).to(ACC)
        sigmoid = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        tl.store(grad_ptr + offsets, ((sigmoid - target) * scale).to(grad_ptr.dtype.element_ty), mask=mask)
    return tl.sum(acc, axis=0)


@triton.jit
def _scale(n, AVERAGE: tl.constexpr, ACC: tl.constexpr):
    """1 / n for a mean over a non-empty group, else 1; computed here in ACC, not passed as a float32."""
    if AVERAGE:
        scale = 1.0 / tl.cast(tl.maximum(n, 1), ACC)
    else:
        scale = tl.full([], 1.0, ACC)
    return scale


@triton.jit
def _store_values(values_ptr, real, wrong, fake, n_real, n_wrong, n_fake, negative_weight, AVERAGE: tl.constexpr,
                  ACC: tl.constexpr):  # fmt: skip
    """values = [loss, L_real, L_wrong, L_fake] from the three groups' loss sums."""
    real = real * _scale(n_real, AVERAGE, ACC)
    wrong = wrong * _scale(n_wrong, AVERAGE, ACC)
    fake = fake * _scale(n_fake, AVERAGE, ACC)
    out = values_ptr.dtype.element_ty
    tl.store(values_ptr + 0, (real + tl.cast(negative_weight, ACC) * (wrong + fake)).to(out))
    tl.store(values_ptr + 1, real.to(out))
    tl.store(values_ptr + 2, wrong.to(out))
    tl.store(values_ptr + 3, fake.to(out))


@triton.jit
def _matching_aware_loss_kernel(
    real_ptr,
    wrong_ptr,
    fake_ptr,
    grad_real_ptr,
    grad_wrong_ptr,
    grad_fake_ptr,
    out_ptr,
    n_real,
    n_wrong,
    n_fake,
    chunk,
    real_target_hi,
    real_target_lo,
    negative_weight,
    AVERAGE: tl.constexpr,
    FINAL: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """Program p covers [p * chunk, (p + 1) * chunk) of [real | wrong | fake]. FINAL (a grid of one):
    out_ptr is `values`; otherwise out_ptr is `partials` and p writes its three sums at 3p, 3p+1, 3p+2."""
    pid = tl.program_id(0).to(tl.int64)
    total = tl.cast(n_real, tl.int64) + n_wrong + n_fake
    chunk_begin = pid * chunk
    chunk_end = tl.minimum(chunk_begin + chunk, total)
    # tl.cast to ACC: torch.compile passes Python floats as fp64 arguments, which would promote float32 sums
    # (and tl.cast, unlike .to, also takes the ints Triton turns into constexprs when they equal 1)
    real_target = tl.cast(real_target_hi, ACC) + tl.cast(real_target_lo, ACC)
    zero = tl.full([], 0.0, ACC)
    real = _group_sum(real_ptr, grad_real_ptr, 0, n_real, chunk_begin, chunk_end, real_target, AVERAGE, BLOCK, ACC)
    begin = tl.cast(n_real, tl.int64)
    wrong = _group_sum(wrong_ptr, grad_wrong_ptr, begin, n_wrong, chunk_begin, chunk_end, zero, AVERAGE, BLOCK, ACC)
    begin += n_wrong
    fake = _group_sum(fake_ptr, grad_fake_ptr, begin, n_fake, chunk_begin, chunk_end, zero, AVERAGE, BLOCK, ACC)
    if FINAL:
        _store_values(out_ptr, real, wrong, fake, n_real, n_wrong, n_fake, negative_weight, AVERAGE, ACC)
    else:
        tl.store(out_ptr + pid * 3 + 0, real.to(ACC))
        tl.store(out_ptr + pid * 3 + 1, wrong.to(ACC))
        tl.store(out_ptr + pid * 3 + 2, fake.to(ACC))


@triton.jit
def _sum_partials(partials_ptr, group, num_programs, PARTIALS_BLOCK: tl.constexpr, ACC: tl.constexpr):
    acc = tl.zeros([PARTIALS_BLOCK], dtype=ACC)
    for start in range(0, num_programs, PARTIALS_BLOCK):
        index = start + tl.arange(0, PARTIALS_BLOCK)
        acc += tl.load(partials_ptr + index * 3 + group, mask=index < num_programs, other=0.0).to(ACC)
    return tl.sum(acc, axis=0)


@triton.jit
def _matching_aware_loss_finish_kernel(
    partials_ptr,
    values_ptr,
    num_programs,
    n_real,
    n_wrong,
    n_fake,
    negative_weight,
    AVERAGE: tl.constexpr,
    PARTIALS_BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """One program: each group's partial sums added in program order (fixed lanes, fixed tree)."""
    real = _sum_partials(partials_ptr, 0, num_programs, PARTIALS_BLOCK, ACC)
    wrong = _sum_partials(partials_ptr, 1, num_programs, PARTIALS_BLOCK, ACC)
    fake = _sum_partials(partials_ptr, 2, num_programs, PARTIALS_BLOCK, ACC)
    _store_values(values_ptr, real, wrong, fake, n_real, n_wrong, n_fake, negative_weight, AVERAGE, ACC)


@triton_op("t2ifast::matching_aware_loss_triton", mutates_args=())
def matching_aware_loss_triton(
    s_real: torch.Tensor, s_wrong: torch.Tensor, s_fake: torch.Tensor, real_target: float, average: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::matching_aware_loss``."""
    groups = [s.contiguous() for s in (s_real, s_wrong, s_fake)]
    grads = [torch.empty_like(s) for s in groups]
    values = s_real.new_empty(4)
    numels = [s.numel() for s in groups]
    programs, chunk = grid(sum(numels), sm_count(s_real.device))
    single = bool(programs == 1)  # a Python bool (a guard when torch.compile traces symbolic sizes)
    acc_dtype = torch.float64 if s_real.dtype == torch.float64 else torch.float32
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    # one program writes `values` itself; more write their sums to `partials` for the finish kernel
    partials = values if single else torch.empty(programs * NUM_GROUPS, dtype=acc_dtype, device=s_real.device)
    weight = negative_weight(s_wrong, s_fake)
    wrap_triton(_matching_aware_loss_kernel)[(programs,)](
        *groups,
        *grads,
        partials,
        *numels,
        chunk,
        *_split_float32(real_target),
        weight,
        AVERAGE=average,
        FINAL=single,
        BLOCK=BLOCK,
        ACC=acc,
    )
    if not single:
        wrap_triton(_matching_aware_loss_finish_kernel)[(1,)](
            partials, values, programs, *numels, weight, AVERAGE=average, PARTIALS_BLOCK=PARTIALS_BLOCK, ACC=acc
        )
    return values, grads[0].view_as(s_real), grads[1].view_as(s_wrong), grads[2].view_as(s_fake)
