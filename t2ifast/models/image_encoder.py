"""DAMSM image encoders: region features (for the word loss) and a global code (for the sentence loss).

- `ImageEncoder`: a small CNN trained from scratch with the text encoder (the default: nothing to download,
  runs anywhere). Images of any square size are resized to its `input_size`, as AttnGAN resizes to 299.
- `InceptionImageEncoder`: AttnGAN's CNN_ENCODER, a frozen Inception-v3 trunk read from a weights file the
  user gives (nothing is ever downloaded) with two trainable projections. It needs torchvision for the
  Inception-v3 definition; t2ifast does not depend on it.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2ifast.models.text_encoder import _check_positive_int

# AttnGAN's CNN_ENCODER: the Inception-v3 modules it runs, in order (max-pools after 2b and 4a)
INCEPTION_TRUNK = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)
INCEPTION_INPUT_SIZE = 299
PROJECTION_INIT_RANGE = 0.1  # AttnGAN's CNN_ENCODER.init_trainable_weights
REGION_POSITION_INIT_STD = 0.1  # ImageEncoder(positional=True): small next to the regions at the start


def check_images(images):
    """images must be a float tensor [B, 3, S, S]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, S, S], got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor in [-1, 1], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be [B, 3, S, S] (square RGB, B >= 1), got shape {tuple(images.shape)}")


def resize_images(images, size):
    """Bilinear resize of square images to size × size (antialiased when shrinking); unchanged if already so.
    Float16 / bfloat16 images (a generator's under autocast) are resized in float32, returned in their dtype:
    antialiased resizing has no reduced-precision CPU kernel."""
    if images.shape[-1] == size:
        return images
    compute = torch.float32 if images.dtype in (torch.float16, torch.bfloat16) else images.dtype
    resized = F.interpolate(
        images.to(compute), size=(size, size), mode="bilinear", align_corners=False, antialias=images.shape[-1] > size
    )
    return resized.to(images.dtype)


def _down(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]


class ImageEncoder(nn.Module):
    """The DAMSM image encoder trained from scratch: a conv-BN-LeakyReLU downsampling CNN.

    Args:
        embedding_dim: D, the size of the region features and of the global code (the text encoder's
            ``hidden_dim``; 256 in AttnGAN).
        input_size: images are resized (bilinear) to input_size × input_size first; a multiple of 16.
        width: channels after the stem; doubled at each of the last three downsamplings.
        positional: keep where things are in both outputs (see below). False is AttnGAN's layout, in which
            the code averages the last map and the regions carry no coordinates.

    Layout (input_size S = 64 by default): a 3×3 stem (width) and 4×4 stride-2 convolutions to S/2 (width),
    S/4 (2·width), S/8 (4·width) — the region grid, projected to D by a 1×1 convolution (`emb_features`, as
    AttnGAN) — then S/16 (8·width), average-pooled and projected to D by a linear layer (`emb_cnn_code`).
    With ``positional``, `emb_cnn_code` reads the S/16 map flattened beside its average, and a learnt
    position embedding (`region_position`, [D, S/8, S/8]) is added to the regions. Averaging throws "where"
    away, and from scratch the contrastive losses never learn it back: on the synthetic set a caption's
    position word was told apart at chance (11%) by the averaged code and 97% by the flattened one
    (docs/training-quality.md).

    ``forward(images [B, 3, S', S'] in [-1, 1])`` -> ``(regions [B, D, S/8, S/8], code [B, D])``; any S' works.
    """

    def __init__(self, embedding_dim=256, *, input_size=64, width=64, positional=False):
        super().__init__()
        _check_positive_int("embedding_dim", embedding_dim)
        _check_positive_int("input_size", input_size, minimum=16)
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        _check_positive_int("width", width)
        if not isinstance(positional, bool):
            raise TypeError(f"positional must be True or False, got {positional!r}")
        self.embedding_dim, self.input_size, self.width = embedding_dim, input_size, width
        self.positional = positional
        self.region_size = input_size // 8
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            *_down(width, width),
            *_down(width, 2 * width),
            *_down(2 * width, 4 * width),
        )
        self.code_features = nn.Sequential(*_down(4 * width, 8 * width))
        self.emb_features = nn.Conv2d(4 * width, embedding_dim, 1, bias=False)
        code_cells = (input_size // 16) ** 2 + 1 if positional else 1  # the flattened map and its average
        self.emb_cnn_code = nn.Linear(8 * width * code_cells, embedding_dim)
        if positional:
            size = self.region_size
            self.region_position = nn.Parameter(torch.randn(embedding_dim, size, size) * REGION_POSITION_INIT_STD)

    def extra_repr(self):
        return (
            f"embedding_dim={self.embedding_dim}, input_size={self.input_size}, width={self.width}, "
            f"positional={self.positional}"
        )

    def forward(self, images):
        check_images(images)
        x = self.features(resize_images(images, self.input_size))
        regions = self.emb_features(x)
        last = self.code_features(x)
        pooled = last.mean(dim=(2, 3))
        if self.positional:
            # each word's attention context then says where its regions are, and the code where the object is
            regions = regions + self.region_position.to(regions.dtype)
            pooled = torch.cat([last.flatten(1), pooled], dim=1)
        return regions, self.emb_cnn_code(pooled)


def _import_inception3():
    try:
        from torchvision.models.inception import Inception3
    except ImportError as error:
        raise ImportError(
            "InceptionImageEncoder needs torchvision for the Inception-v3 definition, and it is not installed: "
            f"pip install torchvision — the release built for the installed torch {torch.__version__}, so that pip "
            "does not replace torch (t2ifast does not depend on torchvision; the default DAMSM ImageEncoder "
            "needs nothing extra)"
        ) from error
    return Inception3


class InceptionImageEncoder(nn.Module):
    """AttnGAN's DAMSM image encoder (CNN_ENCODER) on a frozen Inception-v3 trunk from a local weights file.

    Args:
        weights: path of a weights file holding the Inception-v3 trunk: either torchvision's Inception-v3
            state_dict (``inception_v3_google-*.pth``, the file AttnGAN downloads) or a released AttnGAN image
            encoder (``image_encoder200.pth``: trunk plus ``emb_features`` and ``emb_cnn_code``, which are then
            loaded too). Nothing is downloaded.
        embedding_dim: D, the size of the region features and the global code.

    Images ``[B, 3, S, S]`` in [-1, 1] are resized (bilinear) to 299 × 299 and run through the trunk as in
    CNN_ENCODER (no torchvision ``transform_input``); region features = ``emb_features`` (1×1 conv, 768 -> D)
    of Mixed_6e's 17 × 17 output; code = ``emb_cnn_code`` (linear, 2048 -> D) of Mixed_7c average-pooled.
    ``forward`` -> ``(regions [B, D, 17, 17], code [B, D])``.

    The trunk is frozen: its parameters do not require grad and it stays in eval mode (its BatchNorm uses the
    file's running statistics) also after ``.train()``; AttnGAN left the trunk's BatchNorm in training mode.
    The state_dict keys are CNN_ENCODER's (``Mixed_6e.branch1x1.conv.weight``, ..., ``emb_features.weight``).
    """

    def __init__(self, weights, embedding_dim=256):
        super().__init__()
        _check_positive_int("embedding_dim", embedding_dim)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights: Inception-v3 weights file not found: {path} (give the path of torchvision's "
                "inception_v3_google-*.pth or of a released AttnGAN image_encoder*.pth; nothing is downloaded)"
            )
        inception = _import_inception3()(aux_logits=False, init_weights=False)
        self.embedding_dim = embedding_dim
        for name in INCEPTION_TRUNK:
            setattr(self, name, getattr(inception, name))
        self.emb_features = nn.Conv2d(768, embedding_dim, 1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, embedding_dim)
        with torch.no_grad():
            self.emb_features.weight.uniform_(-PROJECTION_INIT_RANGE, PROJECTION_INIT_RANGE)
            self.emb_cnn_code.weight.uniform_(-PROJECTION_INIT_RANGE, PROJECTION_INIT_RANGE)
        self._load(path)
        for name in INCEPTION_TRUNK:
            getattr(self, name).requires_grad_(False)
        self.train()

    def _load(self, path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"weights: {path} does not hold a state_dict (got {type(state).__name__})")
        state = {key.removeprefix("module."): value for key, value in state.items()}
        own = self.state_dict()
        trunk = [k for k in own if k.split(".")[0] in INCEPTION_TRUNK and not k.endswith("num_batches_tracked")]
        missing = [k for k in trunk if k not in state]
        if missing:
            raise ValueError(
                f"weights: {path} is not an Inception-v3 state_dict: {len(missing)} trunk tensors are missing "
                f"(e.g. {', '.join(missing[:3])})"
            )
        # a released AttnGAN image encoder also holds emb_features / emb_cnn_code; torchvision's file does not
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def train(self, mode=True):
        super().train(mode)
        for name in INCEPTION_TRUNK:
            getattr(self, name).eval()
        return self

    def forward(self, images):
        check_images(images)
        x = resize_images(images, INCEPTION_INPUT_SIZE)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in INCEPTION_TRUNK[5:13]:  # Mixed_5b .. Mixed_6e: 17 × 17 × 768
            x = getattr(self, name)(x)
        regions = self.emb_features(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # 8 × 8 × 2048
        code = self.emb_cnn_code(x.mean(dim=(2, 3)))
        return regions, code


__all__ = ["ImageEncoder", "InceptionImageEncoder"]
