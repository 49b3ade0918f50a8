"""The device's two measured ceilings, against which benchmarks report their fraction:
memory bandwidth (a large device-to-device copy, bytes read + written) and bf16 matrix throughput."""

import torch


def _median_ms(fn, repeats=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    if not torch.cuda.is_available():
        raise SystemExit("roofline.py measures a GPU; none is visible")
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() * src.element_size() / (ms / 1e3) / 1e9
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms_mm = _median_ms(lambda: a @ b)
    tflops = 2 * 8192**3 / (ms_mm / 1e3) / 1e12
    print(f"device {torch.cuda.get_device_name()}")
    print(f"memory bandwidth (D2D copy, read+write): {bandwidth:.0f} GB/s")
    print(f"bf16 matmul 8192^3: {tflops:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
