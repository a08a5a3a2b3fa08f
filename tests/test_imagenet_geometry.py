"""The ImageNet evaluation view (thinjax.data.preprocess) is torchvision's: Resize(size) and
CenterCrop(crop) sizes and offsets exactly as torchvision computes them, for every image
shape; the views of real ImageNet images equal a PyTorch reference; and the release's
ImageNet ThinResNet-50 w=16 scores PyTorch's accuracy on the ImageNet sample."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import release_path
from thinjax.data import preprocess
from thinjax.evaluation import evaluate_checkpoint

# ../shared/checkpoints/README.md: resnet50_width16_imagenet_ema.pt on the 1,000-image
# ImageNet sample in PyTorch (release model code, Resize(232) + CenterCrop(224)).
R50_W16 = "resnet50_width16_imagenet_ema.pt"
PYTORCH_TOP1, PYTORCH_TOP5 = 59.6, 81.2


def tv_resized_size(h: int, w: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """torchvision.transforms.functional._compute_resized_output_size for an int `size`
    (pure Python, as torchvision writes it): (new_h, new_w)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def tv_center_crop(h: int, w: int, crop: int) -> tuple[int, int, int, int, int, int]:
    """torchvision.transforms.functional.center_crop's geometry (pure Python):
    (pad_top, pad_bottom, pad_left, pad_right, crop_top, crop_left)."""
    pad_l = (crop - w) // 2 if crop > w else 0
    pad_t = (crop - h) // 2 if crop > h else 0
    pad_r = (crop - w + 1) // 2 if crop > w else 0
    pad_b = (crop - h + 1) // 2 if crop > h else 0
    h, w = h + pad_t + pad_b, w + pad_l + pad_r
    if (h, w) == (crop, crop):
        return pad_t, pad_b, pad_l, pad_r, 0, 0
    return (pad_t, pad_b, pad_l, pad_r, int(round((h - crop) / 2.0)),
            int(round((w - crop) / 2.0)))


# Tall, wide, square, thin, tiny, smaller than the crop on one or both sides, sizes whose
# long side truncates (not rounds) and whose centre offsets are halves (to even: up and
# down), exact multiples, the resize target itself.
SHAPES = [(375, 500), (500, 375), (333, 500), (500, 333), (334, 500), (500, 500), (224, 224),
          (232, 232), (232, 300), (300, 232), (1, 1), (1, 7), (7, 1), (56, 83), (83, 56),
          (2400, 1600), (1600, 2400), (100, 2000), (2000, 100), (225, 225), (226, 227),
          (227, 226), (200, 300), (300, 200), (223, 500), (500, 223), (221, 230), (240, 235),
          (237, 237), (239, 1000), (1000, 239), (333, 499), (499, 333), (3, 1000)]
# (resize, crop, max_size): the recipe's 232/224, others, resizing below the crop, max_size.
SETTINGS = [(232, 224, None), (256, 224, None), (224, 224, None), (236, 224, None),
            (200, 224, None), (232, 224, 300), (232, 224, 240), (100, 64, 150)]


def sample_shapes(root: str) -> list[tuple[int, int]]:
    """(height, width) of every image of the ImageNet sample (from the JPEG headers)."""
    shapes = set()
    for f in glob.glob(os.path.join(root, "val", "*", "*.JPEG")):
        with Image.open(f) as im:
            shapes.add((im.height, im.width))
    return sorted(shapes)


def check_geometry(shapes: list[tuple[int, int]]) -> None:
    """thinjax's resized sizes and crop boxes equal torchvision's for every shape and
    setting, and for the crop alone (no resize)."""
    hs = tf.constant([s[0] for s in shapes])
    ws = tf.constant([s[1] for s in shapes])
    for resize, crop, max_size in SETTINGS:
        nh, nw = (t.numpy() for t in preprocess.resized_size(hs, ws, resize, max_size))
        expected = [tv_resized_size(h, w, resize, max_size) for h, w in shapes]
        assert list(zip(nh.tolist(), nw.tolist())) == expected, (resize, max_size)
        box = preprocess.center_crop_box(tf.constant(nh), tf.constant(nw), crop).numpy()
        assert [tuple(b) for b in box.T.tolist()] == [tv_center_crop(h, w, crop)
                                                      for h, w in expected], (resize, crop)
    for crop in (224, 32, 501):
        box = preprocess.center_crop_box(hs, ws, crop).numpy()
        assert [tuple(b) for b in box.T.tolist()] == [tv_center_crop(h, w, crop)
                                                      for h, w in shapes], crop


def test_resize_and_center_crop_geometry_is_torchvisions():
    check_geometry(SHAPES)


def test_geometry_of_every_imagenet_sample_shape_is_torchvisions(imagenet_sample):
    shapes = sample_shapes(imagenet_sample)
    assert len(shapes) > 300  # distinct shapes of the 1,000 images
    check_geometry(shapes)


def test_max_size_must_exceed_the_size():
    with pytest.raises(ValueError, match="max_size = 232 must be strictly greater"):
        preprocess.resized_size(tf.constant(10), tf.constant(20), 232, 232)


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (240, 235), (226, 227), (100, 300),
                                   (223, 500), (230, 230), (1, 1)])
@pytest.mark.parametrize("resize", [232, 200, None])
def test_the_view_is_the_resized_image_at_torchvisions_offsets(shape, resize):
    # The pixels come from where the geometry says: the resized image (TensorFlow's
    # resize, at torchvision's size; none when the size is unchanged), zero-padded and
    # cropped at torchvision's offsets.
    h, w = shape
    image = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    crop = 224
    if resize:
        out = preprocess.resize_center_crop(tf.constant(image), resize, crop).numpy()
        nh, nw = tv_resized_size(h, w, resize)
        full = image.astype(np.float32) if (nh, nw) == (h, w) else tf.image.resize(
            image, (nh, nw), method="bilinear", antialias=True).numpy()
    else:
        out = preprocess.center_crop(tf.constant(image), crop).numpy()
        nh, nw, full = h, w, image
    pt, pb, pl, pr, top, left = tv_center_crop(nh, nw, crop)
    expected = np.pad(full, [(pt, pb), (pl, pr), (0, 0)])[top:top + crop, left:left + crop]
    assert out.shape == (crop, crop, 3)
    np.testing.assert_array_equal(out, expected)


def test_greyscale_jpeg_gives_three_equal_channels():
    grey = np.random.default_rng(1).integers(0, 256, (301, 451)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, "JPEG")
    out = preprocess.eval_image(tf.constant(buf.getvalue()), 224, 232).numpy()
    assert out.shape == (224, 224, 3)
    x = out * np.array(preprocess.STD) + np.array(preprocess.MEAN)  # back to [0, 1]
    np.testing.assert_allclose(x[..., 0], x[..., 1], atol=1e-5)
    np.testing.assert_allclose(x[..., 0], x[..., 2], atol=1e-5)


def torch_view(path: str, resize: int = 232, crop: int = 224) -> np.ndarray:
    """The release's test transform in PyTorch (torchvision's semantics, written with
    torch only): PIL decode to RGB, ToTensor, Resize(resize, antialias=True) on the float
    tensor (skipped when the size is unchanged), CenterCrop(crop), Normalize. HWC."""
    torch = pytest.importorskip("torch")
    with Image.open(path) as im:
        x = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1) / 255.0
    nh, nw = tv_resized_size(x.shape[1], x.shape[2], resize)
    if (nh, nw) != tuple(x.shape[1:]):
        x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bilinear",
                                            align_corners=False, antialias=True)[0]
    pt, pb, pl, pr, top, left = tv_center_crop(nh, nw, crop)
    x = torch.nn.functional.pad(x, (pl, pr, pt, pb))[:, top:top + crop, left:left + crop]
    mean, std = torch.tensor(preprocess.MEAN), torch.tensor(preprocess.STD)
    return ((x - mean[:, None, None]) / std[:, None, None]).permute(1, 2, 0).numpy()


def views_to_compare(root: str, n: int = 10) -> list[str]:
    """Images of the sample where the geometry is delicate: every kind of shape (tall,
    wide, square, greyscale, smallest, largest) and the first `n` whose long side
    truncates rather than rounds or whose centre offset is a half (ties to even)."""
    files = sorted(glob.glob(os.path.join(root, "val", "*", "*.JPEG")))
    info = []
    for f in files:
        with Image.open(f) as im:
            info.append((f, im.height, im.width, im.mode))
    pick = {min(info, key=lambda t: min(t[1:3]))[0], max(info, key=lambda t: max(t[1:3]))[0]}
    pick |= set([f for f, h, w, m in info if m == "L"][:4])
    pick |= {next(f for f, h, w, _ in info if cond(h, w))
             for cond in (lambda h, w: h > w, lambda h, w: h < w, lambda h, w: h == w)}
    delicate = []
    for f, h, w, _ in info:
        nh, nw = tv_resized_size(h, w, 232)
        exact = 232 * max(h, w) / min(h, w)
        if round(exact) != int(exact) or (nh - 224) % 4 == 3 or (nw - 224) % 4 == 3:
            delicate.append(f)
    return sorted(pick | set(delicate[:n]))


def test_views_of_real_imagenet_images_equal_pytorchs(imagenet_sample):
    # Same decoder family (libjpeg, accurate integer IDCT) and the same antialiased
    # bilinear filter: the views agree to float rounding (about 1e-4 here). A view one
    # pixel off differs by about 0.1 on average (normalised units).
    files = views_to_compare(imagenet_sample)
    assert len(files) >= 15
    for f in files:
        ours = preprocess.eval_image(tf.io.read_file(f), 224, 232).numpy()
        ref = torch_view(f)
        diff = np.abs(ours - ref)
        assert diff.mean() < 1e-3 and (diff > 0.02).mean() < 1e-3, (f, diff.mean(), diff.max())


def test_release_imagenet_r50_w16_scores_pytorchs_accuracy_on_the_sample(imagenet_sample):
    r = evaluate_checkpoint(release_path(R50_W16), imagenet_sample, "val", batch_size=500,
                            progress=False)
    assert r["count"] == 1000
    hits = {k: round(r[k] * r["count"] / 100) for k in ("top1", "top5")}
    # Within two images of PyTorch's counts (596 and 812 of 1,000).
    assert abs(hits["top1"] - round(PYTORCH_TOP1 * 10)) <= 2, r
    assert abs(hits["top5"] - round(PYTORCH_TOP5 * 10)) <= 2, r
