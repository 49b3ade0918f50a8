"""Where each backend's time goes, at the shapes the issues set targets on: for one forward+backward of each op,
the wall time per call (CUDA events), the GPU kernel time per call and the kernel launches per call (torch.profiler),
and the kernels that take most of it. Wall time far above kernel time means launch or host overhead (or a
recompile); kernel time far above the bytes / bandwidth floor means the kernel itself is slow.

    python benchmarks/profile_ops.py            # on a GPU; gpu_check.sh runs it in its `profile` phase
"""

import torch
from torch.profiler import ProfilerActivity, profile

import t2ifast
from t2ifast.ops import bn_act, damsm_word_scores, matching_aware_loss, word_region_attention

CALLS = 5


def _word_region_attention():
    B, C, N, T = 64, 64, 128 * 128, 18
    regions = torch.randn(B, C, N, device="cuda", requires_grad=True)
    words = torch.randn(B, C, T, device="cuda", requires_grad=True)
    pad_mask = torch.arange(T, device="cuda")[None, :] >= torch.randint(T // 2, T + 1, (B, 1), device="cuda")
    grad = torch.randn(B, C, N, device="cuda")

    def step():
        context, _ = word_region_attention(regions, words, pad_mask)
        return torch.autograd.grad(context, (regions, words), grad)

    return f"word_region_attention fwd+bwd B={B} C={C} N={N} T={T}", step


def _damsm_word_scores():
    B, D, T, N = 48, 256, 18, 289
    words = torch.randn(B, D, T, device="cuda", requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,), device="cuda")
    regions = torch.randn(B, D, N, device="cuda", requires_grad=True)

    def step():
        scores = damsm_word_scores(words, lengths, regions)
        return torch.autograd.grad(scores.logsumexp(dim=1).sum(), (words, regions))

    return f"damsm_word_scores fwd+bwd B=M={B} D={D} T={T} N={N}", step


def _bn_act():
    shape = (64, 256, 8, 8)  # DCGAN ngf 64, the 8x8 layer's BatchNorm input
    y = torch.randn(shape, device="cuda", requires_grad=True)
    weight = torch.rand(shape[1], device="cuda", requires_grad=True)
    bias = torch.randn(shape[1], device="cuda", requires_grad=True)
    running_mean, running_var = torch.zeros(shape[1], device="cuda"), torch.ones(shape[1], device="cuda")
    grad = torch.randn(shape, device="cuda")

    def step():
        out = bn_act(y, weight, bias, running_mean, running_var, training=True, act="relu")
        return torch.autograd.grad(out, (y, weight, bias), grad)

    return f"bn_act relu fwd+bwd {list(shape)}", step


def _matching_aware_loss():
    B = 4096
    logits = [torch.randn(B, device="cuda", requires_grad=True) for _ in range(3)]

    def step():
        return torch.autograd.grad(matching_aware_loss(*logits).loss, logits)

    return f"matching_aware_loss fwd+bwd B={B}", step


def _wall_ms(step):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(CALLS):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / CALLS


def _profile(step):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total_us = sum(e.device_time_total for e in kernels) / CALLS
    launches = sum(e.count for e in kernels) / CALLS
    top = ", ".join(f"{e.key[:48]} {e.device_time_total / CALLS:.0f}µs×{e.count // CALLS}" for e in kernels[:4])
    return total_us, launches, top


def main():
    if not torch.cuda.is_available():
        raise SystemExit("profile_ops.py profiles GPU kernels; no GPU is visible")
    for make in (_word_region_attention, _damsm_word_scores, _bn_act, _matching_aware_loss):
        title, step = make()
        print(f"\n## {title}")
        for backend in ("reference", "native", "triton"):
            try:
                with t2ifast.backend(backend):
                    for _ in range(3):  # warm-up: JIT compiles, allocator
                        step()
                    torch.cuda.synchronize()
                    wall = _wall_ms(step)
                    kernel_us, launches, top = _profile(step)
            except Exception as error:  # a backend that cannot run here: say so and go on
                print(f"{backend:10s} failed: {type(error).__name__}: {str(error)[:200]}")
                continue
            print(f"{backend:10s} wall {wall * 1e3:8.0f} µs | kernels {kernel_us:8.0f} µs in {launches:.0f} launches")
            print(f"{'':10s} top: {top}")


if __name__ == "__main__":
    main()
