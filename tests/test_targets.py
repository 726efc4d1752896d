"""Tests of dflows.targets: presets, validation, resampling and reading files.

Every file is written by the test itself under ``tmp_path``: arrays with NumPy and images
with Pillow.
"""

import math
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from dflows.targets import (
    PRESETS,
    TargetError,
    image_to_array,
    load_image,
    load_npy,
    load_target,
    preset,
    resample,
    save_target,
    validate_target,
)

# Presets.


def preset_cases():
    cases = []
    for name, spec in PRESETS.items():
        for size in sorted({spec.native_size, 2, 17, 256}):
            cases.append((name, size))
    return cases


@pytest.mark.parametrize(("name", "size"), preset_cases())
def test_preset_is_valid_distribution(name, size):
    p = preset(name, size)

    assert p.shape == (size, size)
    assert p.dtype == np.float64
    assert np.all(np.isfinite(p))
    assert p.min() >= 0.0
    assert abs(p.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_default_is_native_size(name):
    native = PRESETS[name].native_size

    assert preset(name).shape == (native, native)


def test_preset_native_sizes():
    assert PRESETS["ring8"].native_size == 91
    assert PRESETS["gaussian"].native_size == 30


def test_preset_unknown_name():
    with pytest.raises(TargetError, match="unknown preset 'ring9'.*ring8"):
        preset("ring9")


@pytest.mark.parametrize("size", [1, 257, 0, 2.5, True, "64"])
def test_preset_invalid_size(size):
    with pytest.raises(TargetError, match="out of range"):
        preset("moons", size)


def test_ring8_matches_its_generator():
    # Draw from the generator the ring8 docstring describes and histogram the draws:
    # 8 Gaussians (std 0.1) at radius 2, clipped to [-2.25, 2.25], quantised as round(20 v) + 45.
    count = 400_000
    generator = np.random.default_rng(0)
    angles = 2 * np.pi * generator.integers(0, 8, count) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = np.clip(centres + 0.1 * generator.standard_normal((count, 2)), -2.25, 2.25)
    cells = (np.round(20 * points) + 45).astype(int)
    counts = np.zeros((91, 91))
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)

    expected = preset("ring8") * count
    spread = np.sqrt(expected * (1 - expected / count))
    busy = expected >= 20
    rare_expected = expected[~busy].sum()

    # Counts are binomial, so 6 standard deviations bound each busy cell and the rare
    # cells together. Rare cells are pooled because one stray draw there is far above 6 sigma.
    assert np.all(np.abs(counts[busy] - expected[busy]) <= 6 * spread[busy])
    assert abs(counts[~busy].sum() - rare_expected) <= 6 * math.sqrt(rare_expected) + 1


def test_ring8_peaks_on_circle():
    ring = preset("ring8")
    peaks = set()
    for i in range(8):
        angle = 2 * math.pi * i / 8
        peaks.add((round(20 * 2 * math.cos(angle)) + 45, round(20 * 2 * math.sin(angle)) + 45))

    top = np.argsort(ring.ravel())[-8:]

    assert {(int(i) // 91, int(i) % 91) for i in top} == peaks


def test_gaussian_mean_row_then_column():
    p = preset("gaussian")
    cells = np.arange(30)

    # The demo keeps the integer part of N((5, 7), 2), so the mean cell index is 0.5 lower.
    assert abs((p.sum(axis=1) * cells).sum() - 4.5) < 0.01
    assert abs((p.sum(axis=0) * cells).sum() - 6.5) < 0.01


def test_uniform_preset_is_uniform():
    p = preset("uniform", 9)

    assert np.allclose(p, 1 / 81, rtol=0, atol=1e-17)


def test_checkerboard_has_empty_squares():
    p = preset("checkerboard", 64)

    # Each of the 4 x 4 squares covers 16 x 16 cells, and the top-left one is dark.
    assert p[:16, :16].sum() > 0.12
    assert p[:16, 16:32].sum() == 0.0


# Validation.


def test_validate_normalises_weights():
    p = validate_target([[1, 3], [0, 4]])

    assert p.tolist() == [[0.125, 0.375], [0.0, 0.5]]


def test_validate_leaves_input_unchanged():
    weights = np.array([[2.0, 2.0], [2.0, 2.0]])

    validate_target(weights)

    assert weights.tolist() == [[2.0, 2.0], [2.0, 2.0]]


@pytest.mark.parametrize("size", [2, 256])
def test_validate_accepts_grid_limits(size):
    assert validate_target(np.ones((size, size))).shape == (size, size)


def bad_target(kind):
    p = np.ones((4, 4))
    if kind == "negative":
        p[1, 2] = -0.5
    elif kind == "nan":
        p[3, 0] = np.nan
    elif kind == "inf":
        p[0, 1] = np.inf
    elif kind == "minus_inf":
        p[2, 2] = -np.inf
    elif kind == "zero":
        p[:] = 0.0
    elif kind == "not_square":
        p = np.ones((4, 5))
    elif kind == "one_d":
        p = np.ones(16)
    elif kind == "three_d":
        p = np.ones((2, 2, 2))
    elif kind == "k1":
        p = np.ones((1, 1))
    elif kind == "k257":
        p = np.ones((257, 257))
    elif kind == "text":
        p = [["a", "b"], ["c", "d"]]
    return p


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("negative", r"1 negative entries \(minimum -0.5 at row 1, column 2\)"),
        ("nan", r"1 NaN entries \(first at row 3, column 0\)"),
        ("inf", r"1 infinite entries \(first at row 0, column 1\)"),
        ("minus_inf", r"1 infinite entries \(first at row 2, column 2\)"),
        ("zero", "is all zero"),
        ("not_square", r"must be square \(K x K\), got shape \(4, 5\)"),
        ("one_d", r"must be a 2D array, got shape \(16,\)"),
        ("three_d", r"must be a 2D array, got shape \(2, 2, 2\)"),
        ("k1", "K=1, out of range"),
        ("k257", "K=257, out of range"),
        ("text", "is not a numeric array"),
    ],
)
def test_validate_rejects_bad_target(kind, message):
    with pytest.raises(TargetError, match=message):
        validate_target(bad_target(kind))


def test_validate_names_the_source():
    with pytest.raises(TargetError, match="^weights.npy has 1 NaN"):
        validate_target(bad_target("nan"), name="weights.npy")


def test_target_error_is_value_error():
    assert issubclass(TargetError, ValueError)


# Resampling.


def test_resample_keeps_total_mass():
    weights = np.random.default_rng(1).random((37, 37))

    for size in [2, 5, 64, 91, 256]:
        assert math.isclose(resample(weights, size).sum(), weights.sum(), rel_tol=1e-12), size


def test_resample_keeps_top_left_mass():
    weights = np.zeros((4, 4))
    weights[0, 0] = 1.0

    coarse = resample(weights, 3)
    fine = resample(weights, 8)

    assert coarse[0, 0] == 1.0
    assert np.allclose(fine[:2, :2], 0.25, rtol=0, atol=1e-15)
    assert fine[2:, :].sum() == 0.0
    assert fine[:, 2:].sum() == 0.0


def test_resample_keeps_lopsided_shape():
    weights = np.zeros((60, 60))
    weights[:20, :10] = 1.0

    result = resample(weights, 17)
    rows = result.sum(axis=1)
    columns = result.sum(axis=0)

    assert rows[:6].sum() / rows.sum() > 0.99
    assert columns[:3].sum() / columns.sum() > 0.99
    assert result[-1, -1] == 0.0


def test_resample_up_then_down_is_identity():
    weights = np.random.default_rng(2).random((6, 6))

    assert np.allclose(resample(resample(weights, 18), 6), weights, rtol=1e-12, atol=0)


def test_resample_stretches_rectangle():
    weights = np.ones((2, 4))

    result = resample(weights, 4)

    assert result.shape == (4, 4)
    assert np.allclose(result, 0.5, rtol=0, atol=1e-15)


def test_resample_rejects_one_dimension():
    with pytest.raises(TargetError, match="2D array"):
        resample(np.ones(9), 3)


@pytest.mark.parametrize("size", [1, 257])
def test_resample_rejects_invalid_size(size):
    with pytest.raises(TargetError, match=f"K={size} is out of range"):
        resample(np.ones((4, 4)), size)


# .npy files.


def test_npy_round_trip(tmp_path):
    target = preset("spiral", 20)
    path = tmp_path / "spiral.npy"

    save_target(target, path)

    assert np.array_equal(load_npy(path), target)
    assert np.array_equal(load_target(str(path)), target)


def test_npy_resampled_to_size(tmp_path):
    path = tmp_path / "weights.npy"
    weights = np.zeros((8, 8))
    weights[0, 0] = 1.0
    np.save(path, weights)

    target = load_npy(path, size=4)

    assert target.shape == (4, 4)
    assert target[0, 0] == 1.0


def test_npy_rectangle_padded_to_square(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.ones((2, 4)))

    target = load_npy(path, size=4)

    # The 2 x 4 array is centred in a 4 x 4 square, so rows 0 and 3 stay empty.
    assert target[0].sum() == 0.0
    assert target[3].sum() == 0.0
    assert np.allclose(target[1:3], 1 / 8, rtol=0, atol=1e-15)


def test_npy_missing_file(tmp_path):
    path = tmp_path / "absent.npy"

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: file not found"):
        load_npy(path)


def test_npy_with_pickled_object(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: not a readable .npy array"):
        load_npy(path)


def test_npy_with_foreign_bytes(tmp_path):
    path = tmp_path / "noise.npy"
    path.write_bytes(pickle.dumps([1, 2, 3]))

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: not a readable .npy array"):
        load_npy(path)


def test_npy_with_bad_values_names_file(tmp_path):
    path = tmp_path / "negative.npy"
    np.save(path, bad_target("negative"))

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))} has 1 negative entries"):
        load_npy(path)


# Images.


def lopsided_pixels(height=40, width=40):
    """Return a dark 8-bit image with a bright top-left block and a dim bottom-right block."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[: height // 4, : width // 4] = 255
    pixels[-height // 4 :, -width // 4 :] = 40
    return pixels


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "L"), (".png", "RGB"), (".jpg", "L"), (".jpeg", "RGB")])
def test_image_keeps_orientation(tmp_path, suffix, mode):
    path = tmp_path / f"lopsided{suffix}"
    Image.fromarray(lopsided_pixels()).convert(mode).save(path)

    target = load_image(path, size=8)

    assert target.shape == (8, 8)
    assert abs(target.sum() - 1.0) < 1e-12
    assert np.unravel_index(target.argmax(), target.shape) == (0, 0)
    assert target[:2, :2].sum() > 0.7
    assert target[:2, :2].sum() > 4 * target[-2:, -2:].sum()


def test_image_via_load_target(tmp_path):
    path = tmp_path / "lopsided.png"
    Image.fromarray(lopsided_pixels()).save(path)

    target = load_target(path, size=10)

    assert target.shape == (10, 10)
    assert np.unravel_index(target.argmax(), target.shape) == (0, 0)


def test_image_upper_case_suffix(tmp_path):
    path = tmp_path / "LOPSIDED.PNG"
    Image.fromarray(lopsided_pixels()).save(path, format="PNG")

    target = load_target(path, size=8)

    assert np.unravel_index(target.argmax(), target.shape) == (0, 0)


def test_image_default_size(tmp_path):
    path = tmp_path / "lopsided.png"
    Image.fromarray(lopsided_pixels()).save(path)

    assert load_target(path).shape == (64, 64)


def test_image_invert_prefers_dark(tmp_path):
    path = tmp_path / "lopsided.png"
    Image.fromarray(lopsided_pixels()).save(path)

    target = load_image(path, size=8, invert=True)

    assert target[:2, :2].sum() == 0.0
    assert target[2:6, 2:6].sum() > 0.25


def test_image_transparent_pixels_are_zero(tmp_path):
    path = tmp_path / "half.png"
    rgba = np.full((20, 20, 4), 255, dtype=np.uint8)
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(path)

    target = load_image(path, size=4)

    assert target[:, :2].sum() == 0.0
    assert np.allclose(target[:, 2:], 1 / 8, rtol=0, atol=1e-15)


def test_image_wide_keeps_aspect_ratio(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((10, 20), 255, dtype=np.uint8)).save(path)

    target = load_image(path, size=4)

    # A 20 x 10 image is centred in a 20 x 20 square: rows 0 and 3 stay empty.
    assert target[0].sum() == 0.0
    assert target[3].sum() == 0.0
    assert np.allclose(target[1:3], 1 / 8, rtol=0, atol=1e-15)


def test_image_to_array_values(tmp_path):
    path = tmp_path / "levels.png"
    Image.fromarray(np.array([[0, 51], [255, 102]], dtype=np.uint8)).save(path)

    values = image_to_array(path)

    assert np.allclose(values, [[0.0, 0.2], [1.0, 0.4]], rtol=0, atol=1e-15)


def test_image_sixteen_bit_keeps_levels(tmp_path):
    path = tmp_path / "deep.png"
    pixels = np.zeros((40, 40), dtype=np.uint16)
    pixels[:10, :10] = 60000
    pixels[-10:, -10:] = 1000
    Image.fromarray(pixels).save(path)

    target = load_image(path, size=4)

    assert target[0, 0] > 10 * target[3, 3]


def test_image_exif_rotation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    # The stored pixels are bright at the bottom right. EXIF orientation 3 (rotate by 180
    # degrees) makes a viewer show them at the top left.
    stored = np.ascontiguousarray(lopsided_pixels()[::-1, ::-1])
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 3
    image.save(path, exif=exif)

    target = load_image(path, size=8)

    assert np.unravel_index(target.argmax(), target.shape) == (0, 0)


def test_image_all_black_names_file(tmp_path):
    path = tmp_path / "black.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))} is all zero"):
        load_image(path)


def test_image_unreadable_names_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image")

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: not a readable image"):
        load_image(path)


def test_image_truncated_names_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(lopsided_pixels(200, 200)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: not a readable image"):
        load_image(path)


def test_image_missing_names_file(tmp_path):
    path = tmp_path / "absent.png"

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: file not found"):
        load_image(path)


# Loading by name and saving.


def test_load_target_preset_name():
    assert np.array_equal(load_target("ring8"), preset("ring8"))
    assert load_target("moons", size=20).shape == (20, 20)


def test_load_target_unknown_name():
    with pytest.raises(TargetError, match="'ring9' is neither a preset nor an existing file"):
        load_target("ring9")


def test_load_target_missing_npy(tmp_path):
    path = tmp_path / "absent.npy"

    with pytest.raises(TargetError, match=f"^{re.escape(str(path))}: file not found"):
        load_target(path)


def test_load_target_unsupported_suffix(tmp_path):
    path = tmp_path / "weights.csv"
    path.write_text("1,2\n3,4\n")

    with pytest.raises(TargetError, match=r"unsupported file type \.csv"):
        load_target(path)


def test_save_target_png_keeps_shape(tmp_path):
    path = tmp_path / "saved.png"
    target = np.zeros((16, 16))
    target[:4, :4] = 1.0

    save_target(target, path)
    loaded = load_image(path, size=16)

    assert np.allclose(loaded, target / target.sum(), rtol=0, atol=1e-15)


def test_save_target_rejects_suffix(tmp_path):
    with pytest.raises(TargetError, match=r"cannot save a target as \.txt"):
        save_target(np.ones((4, 4)), tmp_path / "target.txt")


def test_save_target_validates(tmp_path):
    with pytest.raises(TargetError, match="negative"):
        save_target(bad_target("negative"), tmp_path / "target.npy")
