"""Region masks: coverage bounds over 1,000 draws, per-batch mode, determinism, errors, and the masked input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.masks import (
    MASK_CHOICES,
    PAPER_FILL,
    CenterMask,
    MaskError,
    MaskGenerator,
    RandomBlockMask,
    RandomRegionMask,
    VOCShapeMask,
    apply_mask,
    build_mask,
)

DRAWS = 1000


def coverage(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).float().mean(1)


@pytest.fixture(scope="module")
def voc_shapes(voc_root: Path) -> VOCShapeMask:
    return VOCShapeMask(voc_root)


def test_paper_fill_is_the_lua_mean_colour() -> None:
    assert tuple(round(v * 255 / 2 + 255 / 2) for v in PAPER_FILL) == (117, 104, 123)
    assert PAPER_FILL[0] == pytest.approx(-0.0824, abs=1e-4)


@pytest.mark.parametrize(
    ("size", "overlap", "box"),
    [
        (128, 0, (32, 32, 96, 96)),
        (128, 4, (36, 36, 92, 92)),  # Lua: 1 + 32 + 4 .. 96 - 4 (1-based, inclusive)
        (128, 7, (39, 39, 89, 89)),
        (227, 0, (56, 56, 170, 170)),  # side floor(113.5 + 0.5) = 114
    ],
)
def test_center_mask_is_the_centre_square_minus_overlap(size: int, overlap: int, box: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    mask = CenterMask(overlap=overlap).sample(DRAWS, size, size, gen)
    assert mask.shape == (DRAWS, 1, size, size) and mask.dtype == torch.bool
    top, left, bottom, right = box
    expected = torch.zeros(size, size, dtype=torch.bool)
    expected[top:bottom, left:right] = True
    assert torch.equal(mask, expected.expand_as(mask))
    side = right - left
    assert coverage(mask).unique().tolist() == [pytest.approx(side * side / size**2)]
    if overlap == 0 and size == 128:
        assert coverage(mask[:1]).item() == 0.25


def test_center_mask_rejects_an_overlap_that_leaves_no_hole() -> None:
    with pytest.raises(MaskError, match="overlap"):
        CenterMask(overlap=40).sample(1, 128, 128, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_random_block_coverage_within_a_quarter(height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(1)
    cov = coverage(RandomBlockMask().sample(DRAWS, height, width, gen))
    assert (cov > 0).all()
    assert (cov <= 0.25).all()
    assert cov.std() > 0.005  # the blocks really are random
    assert cov.mean() > 0.15  # blocks are added until the quarter is nearly reached


def test_random_block_masks_are_unions_of_several_blocks() -> None:
    """Rows of a mask made of one rectangle are all equal or empty; several blocks give different row patterns."""
    mask = RandomBlockMask().sample(50, 64, 64, torch.Generator().manual_seed(2))[:, 0]
    distinct_rows = [len({tuple(r.tolist()) for r in m if r.any()}) for m in mask]
    assert sum(d >= 2 for d in distinct_rows) >= 45


@pytest.mark.parametrize(("height", "width"), [(64, 64), (40, 72)])
def test_random_region_coverage_in_the_accepted_band(height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(3)
    cov = coverage(RandomRegionMask().sample(DRAWS, height, width, gen))
    assert (cov > 0.20).all() and (cov < 0.30).all()
    assert cov.std() > 0.01


def test_random_region_without_resizing_is_the_lua_algorithm() -> None:
    """field_size == reference_field_size: windows are cut at the image size straight from the thresholded field."""
    mask_gen = RandomRegionMask(noise_size=30, field_size=300, reference_field_size=300, seed=5)
    mask = mask_gen.sample(200, 32, 32, torch.Generator().manual_seed(0))
    cov = coverage(mask)
    assert (cov > 0.20).all() and (cov < 0.30).all()
    # every mask is a window of the thresholded cached field: correlating +-1 patterns gives 32*32 at a match
    pattern = (mask_gen.field.float() < 0.25).float() * 2 - 1
    kernels = mask[:5].float() * 2 - 1
    score = torch.nn.functional.conv2d(pattern[None, None], kernels)
    assert (score.flatten(1).max(1).values == 32 * 32).all()


def test_random_region_field_is_cached_and_seeded() -> None:
    a, b, c = RandomRegionMask(field_size=700), RandomRegionMask(field_size=700), RandomRegionMask(700, seed=1)
    assert a.field is a.field
    assert a.field.shape == (700, 700)
    assert torch.equal(a.field, b.field) and not torch.equal(a.field, c.field)
    assert 0.1 < (a.field.float() < 0.25).float().mean() < 0.25  # bicubic smoothing: a bit under the 0.25 density


def test_random_region_impossible_band_is_a_clear_error() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(MaskError, match="no window"):
        RandomRegionMask(min_coverage=0.9, max_coverage=0.95, max_tries=16).sample(2, 32, 32, gen)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_voc_shapes_coverage_positive_and_at_most_a_quarter(voc_shapes: VOCShapeMask, height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(4)
    cov = coverage(voc_shapes.sample(DRAWS, height, width, gen))
    assert (cov > 0).all()
    assert (cov <= 0.25).all()  # pastes that would overshoot are rejected: no tolerance needed
    assert cov.mean() > 0.12


def test_voc_shapes_come_from_the_segmentation_object_masks(voc_shapes: VOCShapeMask, voc_root: Path) -> None:
    # the synthetic tree has 1-3 objects per image in the 20 VOC2012 train images
    assert 20 <= voc_shapes.shapes.shape[0] <= 60
    assert voc_shapes.shapes.shape[1:] == (64, 64)
    # shapes are not all rectangles: the tree draws ellipses, triangles and diamonds too
    assert (voc_shapes.fill_fraction < 0.9).any() and (voc_shapes.fill_fraction > 0.05).all()
    capped = VOCShapeMask(voc_root, max_shapes=5)
    assert capped.shapes.shape[0] == 5


def test_voc_shapes_without_masks_names_the_folder(tmp_path: Path) -> None:
    year = tmp_path / "VOCdevkit" / "VOC2012"
    (year / "ImageSets" / "Segmentation").mkdir(parents=True)
    (year / "ImageSets" / "Segmentation" / "train.txt").write_text("2012_000001\n")
    (year / "SegmentationObject").mkdir()
    with pytest.raises(MaskError, match="SegmentationObject"):
        VOCShapeMask(tmp_path)
    with pytest.raises(MaskError, match="nowhere"):
        VOCShapeMask(tmp_path / "nowhere")


@pytest.mark.parametrize("name", MASK_CHOICES)
def test_per_batch_repeats_one_mask_and_default_draws_one_per_sample(name: str, voc_root: Path) -> None:
    gen = torch.Generator().manual_seed(6)
    batch = build_mask(name, per_batch=True, voc_root=voc_root).sample(8, 48, 48, gen)
    assert batch.shape == (8, 1, 48, 48)
    assert all(torch.equal(batch[0], b) for b in batch)
    single = build_mask(name, voc_root=voc_root).sample(8, 48, 48, gen)
    distinct = len({tuple(m.flatten().tolist()) for m in single})
    assert distinct == (1 if name == "center" else 8)


@pytest.mark.parametrize("name", MASK_CHOICES)
def test_masks_are_deterministic_under_a_seeded_generator(name: str, voc_root: Path) -> None:
    gen = build_mask(name, voc_root=voc_root)
    a = gen.sample(6, 40, 56, torch.Generator().manual_seed(7))
    b = gen.sample(6, 40, 56, torch.Generator().manual_seed(7))
    c = gen.sample(6, 40, 56, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert name == "center" or not torch.equal(a, c)


def test_build_mask_options_and_errors(voc_root: Path) -> None:
    m = build_mask("center", overlap=4)
    assert isinstance(m, CenterMask) and m.overlap == 4
    assert isinstance(build_mask("random-block", max_coverage=0.1), RandomBlockMask)
    assert isinstance(build_mask("random-region", per_batch=True), MaskGenerator)
    voc = build_mask("voc-shapes", voc_root=str(voc_root))
    assert isinstance(voc, VOCShapeMask) and voc.shapes.shape[0] > 0
    with pytest.raises(MaskError, match="voc_root"):
        build_mask("voc-shapes")
    with pytest.raises(MaskError, match="unknown mask"):
        build_mask("checkerboard")
    with pytest.raises(TypeError):
        build_mask("center", no_such_option=1)


def test_apply_mask_fills_dropped_pixels_and_keeps_the_input() -> None:
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    before = images.clone()
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, 2:5, 3:6] = True
    out = apply_mask(images, mask)
    assert torch.equal(images, before)
    assert torch.equal(out[~mask.expand_as(out)], images[~mask.expand_as(images)])
    for c, value in enumerate(PAPER_FILL):
        assert torch.allclose(out[0, c, 2:5, 3:6], torch.full((3, 3), value))
    assert torch.equal(out[1], images[1])
    out_bf16 = apply_mask(images.bfloat16(), mask, fill=(0.0, 0.0, 0.0))
    assert out_bf16.dtype == torch.bfloat16 and out_bf16[0, :, 3, 4].abs().sum() == 0
