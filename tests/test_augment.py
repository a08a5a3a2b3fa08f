"""Training augmentations (thinjax.data.augment): torchvision's semantics, PIL's arithmetic
for the colour ops, and seed-only determinism, eager and inside tf.data."""

import io
import math
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

from thinjax.data import augment, trivial_augment
from thinjax.data.preprocess import decode
from thinjax.data.sources import ASSETS

OP = {name: i for i, name in enumerate(augment.TA_WIDE_OPS)}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog")


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Real CIFAR-10 JPEGs (32x32) from the bundled sample."""
    with zipfile.ZipFile(os.path.join(ASSETS, "cifar10_sample.zip")) as z:
        return [z.read(f"train/{c}/0000.jpg") for c in CLASSES]


@pytest.fixture(scope="module")
def images(jpegs) -> list[np.ndarray]:
    """The JPEGs decoded by PIL, a low-contrast copy of two (so AutoContrast and Equalize
    have work to do) and a non-square crop."""
    ims = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
    return ims + [im // 2 + 40 for im in ims[:2]] + [ims[2][:, :24]]


def seeds(n: int, dtype=tf.int64) -> list[tf.Tensor]:
    return [tf.constant([7, i], dtype) for i in range(n)]


def op(image: np.ndarray, name: str, magnitude: float, fill: float = 0) -> np.ndarray:
    return augment.apply_op(tf.constant(image), OP[name], magnitude, fill).numpy()


# torchvision hands ImageEnhance `1 + magnitude` with the magnitude from a float32 table.
SIGNED = [float(np.float32(m)) for m in (-0.99, -0.5, -0.033, 0.066, 0.5, 0.99)]
PIL_OPS = {
    "Brightness": (lambda im, m: ImageEnhance.Brightness(im).enhance(1 + m), SIGNED),
    "Color": (lambda im, m: ImageEnhance.Color(im).enhance(1 + m), SIGNED),
    "Contrast": (lambda im, m: ImageEnhance.Contrast(im).enhance(1 + m), SIGNED),
    "Sharpness": (lambda im, m: ImageEnhance.Sharpness(im).enhance(1 + m), SIGNED),
    "Posterize": (lambda im, m: ImageOps.posterize(im, int(m)), [2.0, 3.0, 5.0, 7.0, 8.0]),
    "Solarize": (ImageOps.solarize, [255.0, 246.5, 127.5, 8.5, 0.0]),
    "AutoContrast": (lambda im, m: ImageOps.autocontrast(im), [0.0]),
    "Equalize": (lambda im, m: ImageOps.equalize(im), [0.0]),
}


@pytest.mark.parametrize("name", PIL_OPS)
def test_colour_ops_match_pil(name, images):
    # Bit-exact here (x86-64). The tolerance (one grey level on at most 1% of pixels)
    # allows only for float32 rounding order, e.g. FMA contraction in PIL's C on other
    # platforms, moving a value that sits on an integer boundary by one level.
    pil_op, magnitudes = PIL_OPS[name]
    for im in images:
        for m in magnitudes:
            ref = np.asarray(pil_op(Image.fromarray(im), m)).astype(int)
            diff = np.abs(op(im, name, m).astype(int) - ref)
            assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (name, m, diff.max())


def test_equalize_caps_the_top_value_at_255_as_pil():
    im = np.full((16, 32, 3), 10, np.uint8)
    im[0, 0] = 200  # step = 511 // 255 = 2, so the LUT gives (1 + 511) // 2 = 256 for 200
    ref = np.asarray(ImageOps.equalize(Image.fromarray(im)))
    np.testing.assert_array_equal(op(im, "Equalize", 0.0), ref)
    assert ref[0, 0, 0] == 255


def test_geometric_ops_with_zero_magnitude_are_the_identity(images):
    for name in ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        for im in images:
            np.testing.assert_array_equal(op(im, name, 0.0), im, err_msg=name)


@pytest.mark.parametrize("magnitude, pixels", [(5.0, 5), (-3.0, -3), (7.9, 7), (-7.9, -7)])
def test_translate_shifts_by_int_magnitude_and_fills_the_border(images, magnitude, pixels):
    im = images[0]
    k = abs(pixels)
    for axis, name in ((1, "TranslateX"), (0, "TranslateY")):
        out = op(im, name, magnitude, fill=17)
        moved = np.moveaxis(out, axis, 0)
        src = np.moveaxis(im, axis, 0)
        if pixels > 0:  # positive: right (x) or down (y)
            np.testing.assert_array_equal(moved[k:], src[:-k])
            assert (moved[:k] == 17).all()
        else:
            np.testing.assert_array_equal(moved[:-k], src[k:])
            assert (moved[-k:] == 17).all()


def test_rotate_is_counter_clockwise_about_the_centre(images):
    im = images[0]
    for degrees, quarter_turns in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        np.testing.assert_array_equal(op(im, "Rotate", degrees), np.rot90(im, quarter_turns))


def table_magnitudes(name: str) -> np.ndarray:
    row = trivial_augment._magnitudes(31)[0][OP[name]]
    return np.concatenate([row, -row]).astype(float)


def test_shear_matches_pil_about_the_top_left_corner(images):
    # torchvision (center=[0, 0]) gives PIL the inverse map (1, m, 0, 0, 1, 0) for ShearX.
    for im in images[:2] + images[-1:]:
        pil = Image.fromarray(im)
        for m in table_magnitudes("ShearX"):
            for name, data in (("ShearX", (1, m, 0, 0, 1, 0)), ("ShearY", (1, 0, 0, m, 1, 0))):
                ref = pil.transform(pil.size, Image.AFFINE, data, Image.NEAREST, fillcolor=0)
                np.testing.assert_array_equal(op(im, name, m), np.asarray(ref))


def test_rotate_matches_pil_but_for_rounding_ties(images):
    # Where output pixel centres map exactly onto pixel boundaries (the diagonals at 45
    # and 135 degrees: one line of pixels, at most max(h, w)), float32 (TensorFlow) and
    # PIL's float64 break the tie differently, as torchvision's PIL and tensor backends
    # do between themselves. Elsewhere (all but ~0.1% of pixels) they agree.
    wrong = []
    for im in (images[0], images[-1]):
        pil = Image.fromarray(im)
        for m in table_magnitudes("Rotate"):
            ref = np.asarray(pil.rotate(m, Image.NEAREST, fillcolor=0))
            wrong.append((op(im, "Rotate", m) != ref).any(-1).sum() / max(im.shape[:2]))
            assert wrong[-1] <= 1, m
    assert np.mean(wrong) <= 0.05, np.mean(wrong)


def test_magnitude_tables_are_torchvisions():
    torch = pytest.importorskip("torch")
    # PyTorch's vectorised CPU kernels (AVX2, AVX-512: what x86-64 machines run) fuse the
    # multiply-add; its plain fallback ("DEFAULT") rounds twice and differs in a few bins.
    exact = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    for n in (31, 5, 10, 14, 51):
        def lin(a, b, n=n):
            return torch.linspace(a, b, n).numpy()
        # torchvision's TrivialAugmentWide._augmentation_space (0 for ops without one).
        space = {"Identity": 0, "ShearX": lin(0.0, 0.99), "ShearY": lin(0.0, 0.99),
                 "TranslateX": lin(0.0, 32.0), "TranslateY": lin(0.0, 32.0),
                 "Rotate": lin(0.0, 135.0), "Brightness": lin(0.0, 0.99),
                 "Color": lin(0.0, 0.99), "Contrast": lin(0.0, 0.99),
                 "Sharpness": lin(0.0, 0.99),
                 "Posterize": (8 - (torch.arange(n) / ((n - 1) / 6)).round().int()).numpy(),
                 "Solarize": lin(255.0, 0.0), "AutoContrast": 0, "Equalize": 0}
        table, signed = trivial_augment._magnitudes(n)
        for i, name in enumerate(augment.TA_WIDE_OPS):
            ref = np.broadcast_to(space[name], n).astype(np.float32)
            if exact:
                np.testing.assert_array_equal(table[i], ref, err_msg=f"{name}, {n} bins")
            else:
                np.testing.assert_allclose(table[i], ref, atol=1e-5)
        np.testing.assert_array_equal(table[OP["Posterize"]], space["Posterize"])
        assert [augment.TA_WIDE_OPS[i] for i in np.flatnonzero(signed)] == [
            "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
            "Brightness", "Color", "Contrast", "Sharpness"]


def test_torch_linspace_is_bit_exact():
    torch = pytest.importorskip("torch")
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("PyTorch runs its non-vectorised kernel here")
    for n in range(2, 70):
        for a, b in ((0.0, 32.0), (0.0, 135.0), (0.0, 0.99), (255.0, 0.0), (-3.0, 14.4)):
            np.testing.assert_array_equal(trivial_augment.torch_linspace(a, b, n),
                                          torch.linspace(a, b, n).numpy(), err_msg=(a, b, n))


def test_translate_bins_move_torchvisions_pixels(images):
    # torchvision translates by int(magnitude) of its float32 table: bin 15 of 31 holds
    # 15.999999 (linspace(0, 32, 31) in float32), i.e. 15 pixels, not 16.
    torch = pytest.importorskip("torch")
    row = trivial_augment._magnitudes(31)[0][OP["TranslateX"]]
    tv = torch.linspace(0.0, 32.0, 31)
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        assert [int(m) for m in row] == [int(float(m)) for m in tv]
    assert int(row[15]) == 15 and int(-row[15]) == -15
    im = images[0]
    for sign in (1, -1):
        out = op(im, "TranslateX", sign * row[15], fill=0)
        shifted = np.zeros_like(im)
        if sign > 0:
            shifted[:, 15:] = im[:, :-15]
        else:
            shifted[:, :-15] = im[:, 15:]
        np.testing.assert_array_equal(out, shifted)


def test_op_choice_is_uniform_and_signs_are_fair():
    n = 2000
    ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds(n)))
    ops, mags = next(iter(ds.map(trivial_augment._sample_op).batch(n)))
    ops, mags = ops.numpy(), mags.numpy()
    counts = np.bincount(ops, minlength=len(augment.TA_WIDE_OPS))
    expected = n / len(counts)
    assert np.abs(counts - expected).max() < 4 * math.sqrt(expected), counts
    table, signed = trivial_augment._magnitudes(31)
    for i, name in enumerate(augment.TA_WIDE_OPS):
        m = mags[ops == i]
        assert np.isin(np.abs(m), np.abs(table[i])).all(), name
        if signed[i]:
            assert 0.3 < (m < 0).mean() < 0.7, name
            assert len(np.unique(np.abs(m))) > 20, name  # bins vary
        else:
            assert (m >= 0).all(), name


def test_trivial_augment_wide_applies_the_sampled_op(images):
    im = tf.constant(images[0])
    for s in seeds(12):
        out = augment.trivial_augment_wide(im, s)
        assert out.dtype == tf.uint8 and out.shape == im.shape
        op_index, magnitude = trivial_augment._sample_op(s)
        np.testing.assert_array_equal(out, augment.apply_op(im, op_index, magnitude))


def augmenters(jpegs, images):
    """(name, fn(i, seed), number of inputs) for each public augmentation."""
    uint8 = tf.constant(np.stack(images[:6]))
    floats = tf.cast(uint8, tf.float32) / 255.0 - 0.5
    raw = tf.constant(jpegs)
    return [
        ("random_crop_flip", lambda i, s: augment.random_crop_flip(uint8[i], s)),
        ("random_resized_crop", lambda i, s: augment.random_resized_crop(raw[i], 24, s)),
        ("trivial_augment_wide", lambda i, s: augment.trivial_augment_wide(uint8[i], s)),
        ("random_erasing", lambda i, s: augment.random_erasing(floats[i], s, p=0.5)),
    ]


def test_same_seed_same_output_different_seeds_differ(jpegs, images):
    for name, fn in augmenters(jpegs, images):
        # Erasing (p=0.5) leaves about half the images alone: 40 seeds erase at least 10
        # distinct boxes but with probability ~1e-4.
        outs = [fn(1, s).numpy() for s in seeds(40 if name == "random_erasing" else 8, tf.int32)]
        np.testing.assert_array_equal(fn(1, seeds(1, tf.int32)[0]), outs[0], err_msg=name)
        distinct = {o.tobytes() for o in outs}
        assert len(distinct) >= (11 if name == "random_erasing" else 6), name


def test_tf_data_parallel_map_equals_eager(jpegs, images):
    n = 24
    seed_list = seeds(n)
    for name, fn in augmenters(jpegs, images):
        eager = [fn(i % 6, s).numpy() for i, s in enumerate(seed_list)]
        ds = tf.data.Dataset.from_tensor_slices((tf.range(n), tf.stack(seed_list)))
        ds = ds.map(lambda i, s: (i, fn(i % 6, s)),  # noqa: B023 (iterated right here)
                    num_parallel_calls=4, deterministic=False)
        for i, out in ds.as_numpy_iterator():
            np.testing.assert_array_equal(out, eager[i], err_msg=name)


def test_random_crop_flip_is_a_window_of_the_zero_padded_image(images):
    im = images[0]
    padded = np.pad(im, [(4, 4), (4, 4), (0, 0)])
    windows = {(i, j): padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)}
    found = []
    for s in seeds(30):
        out = augment.random_crop_flip(tf.constant(im), s).numpy()
        assert out.dtype == np.uint8 and out.shape == im.shape
        hits = [(ij, flip) for ij, w in windows.items() for flip in (False, True)
                if np.array_equal(out, w[:, ::-1] if flip else w)]
        assert len(hits) == 1
        found.append(hits[0])
    assert {flip for _, flip in found} == {False, True}
    assert len({ij for ij, _ in found}) > 10


def test_random_resized_crop_shape_range_and_jpeg_png_agree(jpegs, images):
    big = io.BytesIO()  # a larger 4:2:0 JPEG: windows cross many chroma blocks
    Image.fromarray(images[0]).resize((150, 100)).save(big, "JPEG", subsampling=2)
    for jpeg in jpegs[:3] + [big.getvalue()]:
        pixels = decode(tf.constant(jpeg)).numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        png = buf.getvalue()
        for s in seeds(5):
            a = augment.random_resized_crop(tf.constant(jpeg), 40, s)
            b = augment.random_resized_crop(tf.constant(png), 40, s)
            assert a.dtype == b.dtype == tf.float32 and a.shape == b.shape == (40, 40, 3)
            assert 0 <= tf.reduce_min(a) and tf.reduce_max(a) <= 255
            # Same size and seed: the same window, decoded with or without the crop.
            np.testing.assert_array_equal(a, b)


def test_random_resized_crop_window_is_resized_and_maybe_mirrored(jpegs):
    pixels = decode(tf.constant(jpegs[0])).numpy().astype(np.float32)
    flips = set()
    for s in seeds(8):
        # A quarter of the area at aspect 1 is a 16x16 window: resizing to 16 keeps it.
        out = augment.random_resized_crop(tf.constant(jpegs[0]), 16, s, scale=(0.25, 0.25),
                                          ratio=(1.0, 1.0)).numpy()
        hits = [flip for i in range(17) for j in range(17) for flip in (False, True)
                if np.allclose(out[:, ::-1] if flip else out, pixels[i:i + 16, j:j + 16],
                               atol=1e-3)]
        assert len(hits) == 1
        flips.add(hits[0])
    assert flips == {False, True}
    whole = augment.random_resized_crop(tf.constant(jpegs[0]), 64, seeds(1)[0],
                                        scale=(1.0, 1.0), ratio=(1.0, 1.0)).numpy()
    resized = tf.image.resize(pixels, (64, 64), antialias=True).numpy()
    assert np.allclose(whole, resized, atol=1e-3) or np.allclose(whole, resized[:, ::-1],
                                                                 atol=1e-3)


def tv_rrc_windows(height: int, width: int, n: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                   seed: int = 0) -> np.ndarray:
    """Reference: torchvision's RandomResizedCrop.get_params, `n` times, with numpy's RNG:
    (n, 4) int [top, left, h, w]."""
    rng = np.random.default_rng(seed)
    area, log_ratio = height * width, (math.log(ratio[0]), math.log(ratio[1]))
    out = []
    for _ in range(n):
        for _ in range(10):
            target_area = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                out.append((rng.integers(0, height - h + 1), rng.integers(0, width - w + 1),
                            h, w))
                break
        else:  # fallback to central crop
            in_ratio = float(width) / float(height)
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            out.append(((height - h) // 2, (width - w) // 2, h, w))
    return np.array(out)


def rrc_windows(height: int, width: int, n: int, **kw) -> np.ndarray:
    """thinjax's windows for `n` seeds, inside tf.data: (n, 4) [top, left, h, w]."""
    ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds(n)))
    ds = ds.map(lambda s: augment.rrc_window(height, width, s, **kw)).batch(n)
    return next(iter(ds)).numpy()


@pytest.mark.parametrize("shape", [(375, 500), (500, 333), (100, 20)])
def test_random_resized_crop_windows_are_distributed_as_torchvisions(shape):
    # (100, 20) is so narrow that all 10 candidates often miss: the central fallback.
    height, width = shape
    ours, ref = rrc_windows(height, width, 2000), tv_rrc_windows(height, width, 10_000)
    assert ((ours[:, 2] > 0) & (ours[:, 0] + ours[:, 2] <= height)).all()
    assert ((ours[:, 3] > 0) & (ours[:, 1] + ours[:, 3] <= width)).all()
    for name, f in (("area", lambda x: x[:, 2] * x[:, 3] / (height * width)),
                    ("aspect", lambda x: x[:, 3] / x[:, 2]), ("top", lambda x: x[:, 0]),
                    ("left", lambda x: x[:, 1]), ("bottom", lambda x: x[:, 0] + x[:, 2])):
        p = stats.ks_2samp(f(ours), f(ref)).pvalue
        assert p > 1e-3, (shape, name, p, f(ours).mean(), f(ref).mean())
    # Offsets cover every position: windows touch the top and the bottom row, the first
    # and the last column.
    inner = ours[ours[:, 2] < height]
    assert (inner[:, 0] == 0).any() and (inner[:, 0] + inner[:, 2] == height).any()
    inner = ours[ours[:, 3] < width]
    assert (inner[:, 1] == 0).any() and (inner[:, 1] + inner[:, 3] == width).any()


@pytest.mark.parametrize("shape, scale, ratio", [
    ((375, 500), (0.5, 1.0), (10.0, 20.0)),     # too wide a ratio: full width, centred
    ((375, 500), (0.5, 1.0), (0.01, 0.05)),     # too narrow: full height, centred
    ((500, 333), (2.0, 3.0), (3 / 4, 4 / 3)),   # no area fits: the whole image
    ((500, 375), (2.0, 3.0), (1.5, 2.0)),
    ((7, 5), (0.25, 0.25), (1.0, 1.0)),         # sqrt(8.75) = 2.96: 3x3, not the fallback
    ((5, 5), (0.25, 0.25), (1.0, 1.0)),         # sqrt(6.25) = 2.5: rounds to even, 2x2
    ((40, 40), (0.5, 0.5), (2.0, 2.0)),         # 40x20
])
def test_random_resized_crop_fixed_sizes_and_fallback_are_torchvisions(shape, scale, ratio):
    height, width = shape
    ours = rrc_windows(height, width, 40, scale=scale, ratio=ratio)
    ref = tv_rrc_windows(height, width, 200, scale=scale, ratio=ratio)
    # A single area and ratio, or no fit: every window has torchvision's size.
    assert len({tuple(r) for r in ref[:, 2:]}) == 1
    np.testing.assert_array_equal(ours[:, 2:], np.broadcast_to(ref[0, 2:], ours[:, 2:].shape))
    assert set(map(tuple, ours[:, :2])) <= {(i, j) for i in range(height - ref[0, 2] + 1)
                                            for j in range(width - ref[0, 3] + 1)}
    if len({tuple(r) for r in ref[:, :2]}) == 1:  # the fallback: centred, deterministic
        np.testing.assert_array_equal(ours, np.broadcast_to(ref[0], ours.shape))


def test_random_erasing_erases_one_rectangle_within_scale_and_ratio():
    image = tf.constant(np.random.default_rng(0).normal(size=(40, 60, 3)), tf.float32)
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    erased = 0
    for s in seeds(60):
        out = augment.random_erasing(image, s, p=1.0, value=-1.5).numpy()
        changed = (out != image.numpy()).any(-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        h, w = len(rows), len(cols)
        assert np.ptp(rows) == h - 1 and np.ptp(cols) == w - 1 and changed.sum() == h * w
        assert (out[changed] == -1.5).all()
        # h and w are rounded from the sampled area and ratio: allow half a pixel each.
        assert scale[0] * 2400 <= (h + 0.5) * (w + 0.5)
        assert (h - 0.5) * (w - 0.5) <= scale[1] * 2400
        assert ratio[0] <= (h + 0.5) / (w - 0.5) and (h - 0.5) / (w + 0.5) <= ratio[1]
    assert erased >= 57  # each of 10 candidates fits (h < 40, w < 60) more often than not


def test_random_erasing_probability_and_no_fit():
    image = tf.ones((10, 10, 3))
    for s in seeds(10):
        np.testing.assert_array_equal(augment.random_erasing(image, s, p=0.0), image)
        # The only area fraction allowed needs the whole image: no candidate fits.
        np.testing.assert_array_equal(
            augment.random_erasing(image, s, p=1.0, scale=(0.99, 1.0), ratio=(1.0, 1.0)),
            image)
    hits = [bool(tf.reduce_any(augment.random_erasing(image, s, p=0.5) != image))
            for s in seeds(200)]
    assert 0.4 < np.mean(hits) < 0.6
