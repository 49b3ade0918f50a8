"""Image decoding and the training transform on the CPU with Pillow (the fallback loader's image side).

The transform is AttnGAN's: crop to the bounding box (when there is one), resize the shorter side to 76/64 of the
largest output size, random square crop of that size, random horizontal flip; the smaller outputs are resized from
that crop. With augmentation off: shorter side resized to the largest size, centre crop, no flip.
Outputs are float CHW in [-1, 1].
The DALI pipeline (t2ifast.data.dali) does the same steps.
"""

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from t2ifast.data.errors import DataError

ENLARGE = 76 / 64  # AttnGAN/StackGAN: load at 76/64 of the size, then random-crop back to it


def enlarged_size(size):
    return int(size * ENLARGE)


def attngan_crop_box(bbox, width, height):
    """AttnGAN's square crop around a CUB bounding box (x, y, w, h): side 1.5·max(w, h), clipped to the image."""
    x, y, w, h = bbox
    r = int(max(w, h) * 0.75)
    center_x, center_y = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return (max(0, center_x - r), max(0, center_y - r), min(width, center_x + r), min(height, center_y + r))


def load_image(path, crop_box=None):
    """Decode an image file to RGB, cropped to (left, top, right, bottom) when given. Errors name the file."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except FileNotFoundError as error:
        raise DataError(path, "image file not found") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(path, f"cannot decode image ({error})") from error
    if crop_box is not None:
        image = image.crop(tuple(int(v) for v in crop_box))
    return image


def to_tensor(image):
    """PIL RGB -> float32 CHW tensor in [-1, 1]."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_shorter(image, side):
    """Resize so the shorter side is `side`, keeping the aspect ratio (torchvision's Resize(int), as AttnGAN)."""
    width, height = image.size
    if width <= height:
        new_size = (side, int(side * height / width))
    else:
        new_size = (int(side * width / height), side)
    return image if new_size == image.size else image.resize(new_size, Image.BILINEAR)


def transform(image, sizes, augment, rng):
    """{size: tensor[3, size, size]} for each output size. rng: numpy Generator for the crop and flip."""
    largest = max(sizes)
    image = resize_shorter(image, enlarged_size(largest) if augment else largest)
    width, height = image.size
    if augment:
        left, top = int(rng.integers(0, width - largest + 1)), int(rng.integers(0, height - largest + 1))
    else:
        left, top = round((width - largest) / 2), round((height - largest) / 2)
    image = image.crop((left, top, left + largest, top + largest))
    if augment and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return {
        size: to_tensor(image if size == largest else image.resize((size, size), Image.BILINEAR))
        for size in sorted(sizes)
    }
