"""The device-resident loader augments like the common torchvision pipeline.

A marked 32×32 image (a bright pixel with a dimmer one to its right) is fed many times through
:class:`kdlab.DeviceLoader` and through ``RandomCrop(32, padding=4) → RandomHorizontalFlip →
ToTensor``. From each output we read the crop offset (dx, dy) ∈ {0..2p}² and whether it was
flipped, and check with chi-square tests that both pipelines draw the offset uniformly, flip
half the time, and agree with each other. A deliberately off-by-one sampler must fail the same
checks, so the tolerance cannot pass by accident.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from kdlab import DeviceLoader

PAD, SIZE = 4, 32
ROW, COL = 13, 15  # the bright pixel: always inside the crop, with a neighbour on each side
SAMPLES = 4_050  # 50 per offset cell on average
ALPHA = 1e-3  # a correct sampler fails one check in a thousand; a wrong one always does
CELLS = (2 * PAD + 1) ** 2


def marked_image() -> np.ndarray:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[ROW, COL] = 255
    image[ROW, COL + 1] = 128  # on the right: after a flip it is on the left
    return image


def decode(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, flipped) of every image of a B×3×32×32 batch in [0, 1] units."""
    plane = batch[:, 0].float()
    flat = plane.flatten(1).argmax(1)
    r, c = (flat // SIZE).numpy(), (flat % SIZE).numpy()
    index = np.arange(len(r))
    right = plane.numpy()[index, r, np.clip(c + 1, 0, SIZE - 1)]
    left = plane.numpy()[index, r, np.clip(c - 1, 0, SIZE - 1)]
    assert np.all(plane.numpy()[index, r, c] > 0.99)  # the mark survived every crop
    assert np.all((right > 0.4) ^ (left > 0.4))  # exactly one neighbour is the dim pixel
    flipped = left > 0.4
    column = np.where(flipped, SIZE - 1 - c, c)  # the column before the flip
    # The output pixel (r, column) is padded pixel (r + dy, column + dx) = (ROW + p, COL + p).
    return COL + PAD - column, ROW + PAD - r, flipped


def loader_samples(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = torch.from_numpy(marked_image()).permute(2, 0, 1)[None].repeat(SAMPLES, 1, 1, 1)
    loader = DeviceLoader(
        images,
        torch.zeros(SAMPLES, dtype=torch.long),
        batch_size=512,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),  # x / 255: the same units as ToTensor
        shuffle=True,
        augment=True,
        padding=PAD,
        flip=True,
        seed=seed,
    )
    return decode(torch.cat([x for x, _ in loader]))


def torchvision_samples(seed: int = 0, count: int = SAMPLES, pil: bool = False):
    """The torchvision transforms, on a uint8 tensor image (the same classes and random draws
    as on a PIL image, faster; ``pil=True`` takes the PIL route with ``ToTensor``)."""
    from PIL import Image
    from torchvision import transforms as T

    crop_flip = [T.RandomCrop(SIZE, padding=PAD), T.RandomHorizontalFlip()]
    if pil:
        pipeline, image = T.Compose([*crop_flip, T.ToTensor()]), Image.fromarray(marked_image())
    else:
        pipeline = T.Compose(crop_flip)
        image = torch.from_numpy(marked_image()).permute(2, 0, 1).contiguous()
    torch.manual_seed(seed)
    out = torch.stack([pipeline(image) for _ in range(count)])
    return decode(out if pil else out.float() / 255)


def offset_counts(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    assert dx.min() >= 0 and dy.min() >= 0 and dx.max() <= 2 * PAD and dy.max() <= 2 * PAD
    return np.bincount(dy * (2 * PAD + 1) + dx, minlength=CELLS)


def uniform_p_value(counts: np.ndarray) -> float:
    return stats.chisquare(counts).pvalue  # H0: every cell equally likely


def flip_p_value(flipped: np.ndarray) -> float:
    return stats.binomtest(int(flipped.sum()), len(flipped), 0.5).pvalue


@pytest.fixture(scope="module")
def samples():
    return {"kdlab": loader_samples(), "torchvision": torchvision_samples()}


@pytest.mark.parametrize("pipeline", ["kdlab", "torchvision"])
def test_offsets_uniform_over_the_padded_square_and_flips_half(samples, pipeline):
    dx, dy, flipped = samples[pipeline]
    counts = offset_counts(dx, dy)
    assert (counts > 0).all(), "every offset in {0..2p}² must occur"
    assert uniform_p_value(counts) > ALPHA
    assert flip_p_value(flipped) > ALPHA
    # Flips are drawn independently of the offset: flip rate per offset row is ½ too.
    table = np.array([[np.sum((dy == v) & f) for f in (flipped, ~flipped)] for v in range(9)])
    assert stats.chi2_contingency(table).pvalue > ALPHA


def test_kdlab_and_torchvision_draw_from_the_same_distribution(samples):
    """Homogeneity of the joint (dx, dy, flip) tables of the two pipelines (161 d.o.f.)."""
    tables = []
    for dx, dy, flipped in samples.values():
        tables.append(np.bincount(offset_counts_index(dx, dy, flipped), minlength=2 * CELLS))
    result = stats.chi2_contingency(np.array(tables))
    assert result.dof == 2 * CELLS - 1
    assert result.pvalue > ALPHA


def offset_counts_index(dx, dy, flipped):
    return (dy * (2 * PAD + 1) + dx) * 2 + flipped.astype(int)


def test_pil_and_tensor_routes_of_torchvision_agree():
    """The tensor route used above makes the same draws as the PIL route the reference uses."""
    pairs = zip(torchvision_samples(1, 300), torchvision_samples(1, 300, pil=True), strict=True)
    for a, b in pairs:
        assert np.array_equal(a, b)


def test_the_checks_reject_an_off_by_one_crop_and_a_biased_flip(samples):
    """Negative controls: the same checks fail for samplers that are slightly wrong."""
    rng = np.random.default_rng(0)
    # Offsets drawn from {0..2p-1}: a classic off-by-one of randint's upper bound.
    dx, dy = rng.integers(0, 2 * PAD, SAMPLES), rng.integers(0, 2 * PAD, SAMPLES)
    assert uniform_p_value(offset_counts(dx, dy)) < ALPHA
    # Flips with probability 0.45 instead of 0.5.
    assert flip_p_value(rng.random(SAMPLES) < 0.45) < ALPHA
    # A loader whose offsets lean towards the centre: homogeneity with torchvision fails.
    dx = np.clip(np.rint(rng.normal(PAD, 2.2, SAMPLES)), 0, 2 * PAD).astype(int)
    dy = np.clip(np.rint(rng.normal(PAD, 2.2, SAMPLES)), 0, 2 * PAD).astype(int)
    flips = rng.random(SAMPLES) < 0.5
    reference = samples["torchvision"]
    tables = [
        np.bincount(offset_counts_index(dx, dy, flips), minlength=2 * CELLS),
        np.bincount(offset_counts_index(*reference), minlength=2 * CELLS),
    ]
    assert stats.chi2_contingency(np.array(tables)).pvalue < ALPHA


def test_labels_stay_with_their_images():
    """Image i is filled with the value i + 1 and labelled i: after shuffling, cropping and
    flipping, every image's brightest pixel still names its label, and each epoch shows every
    image once."""
    n = 250
    images = torch.arange(1, n + 1, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 8, 8)
    loader = DeviceLoader(
        images.contiguous(),
        torch.arange(n),
        batch_size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        shuffle=True,
        augment=True,
        padding=2,
        flip=True,
        seed=3,
    )
    for _ in range(2):
        seen = []
        for x, y in loader:
            value = torch.round(x.amax(dim=(1, 2, 3)) * 255).long()
            assert torch.equal(value, y + 1)
            seen.append(y)
        order = torch.cat(seen)
        assert sorted(order.tolist()) == list(range(n))
        assert not torch.equal(order, torch.arange(n))  # shuffled
