"""A short tour of t2ifast's fused ops: each backend against the reference on random logits."""

import torch

import t2ifast
from t2ifast.ops import generator_loss, matching_aware_loss


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    s_real, s_wrong, s_fake = (torch.randn(64, device=device) * 3 for _ in range(3))
    print(f"GAN-CLS discriminator loss on 3 x 64 random logits ({device}):")
    with t2ifast.backend("reference"):
        reference = matching_aware_loss(s_real, s_wrong, s_fake)
    for name in t2ifast.BACKENDS:
        try:
            with t2ifast.backend(name):
                out = matching_aware_loss(s_real, s_wrong, s_fake)
                g = generator_loss(s_fake)
        except t2ifast.BackendUnavailableError as error:
            print(f"  {name:<10} unavailable: {error}")
            continue
        error = (torch.stack(list(out)) - torch.stack(list(reference))).abs().max().item()
        print(
            f"  {name:<10} loss {out.loss.item():.5f} (real {out.real.item():.4f}, wrong {out.wrong.item():.4f}, "
            f"fake {out.fake.item():.4f}); generator {g.item():.5f}; max |diff| vs reference {error:.1e}"
        )


if __name__ == "__main__":
    main()
