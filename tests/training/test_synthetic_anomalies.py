"""The structural-anomaly generator and benchmark: each kind changes the film where it says, the way
it says, reproducibly; the benchmark's AUCs are those of the scores it was given."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model.imaging import read_path
from training.films import Films
from training.structural_benchmark import MEAN, score_set, structural_aucs, structural_set
from training.synthetic_anomalies import FAMILIES, KINDS, alter, lung_fields, make_altered_set

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def films(shared_data) -> list[np.ndarray]:
    folder = shared_data / "zhanglab-224" / "test-dev" / "NORMAL"
    return [read_path(p).pixels.astype(np.float32) for p in sorted(folder.iterdir())[:6]]


def test_lung_fields_are_two_dark_regions_either_side_of_the_spine(films):
    for film in films:
        lungs = lung_fields(film)
        h, w = film.shape
        assert 0.03 * h * w < lungs.left.sum() < 0.3 * h * w
        assert 0.03 * h * w < lungs.right.sum() < 0.3 * h * w
        left_x, right_x = np.nonzero(lungs.left)[1].mean(), np.nonzero(lungs.right)[1].mean()
        assert left_x < w / 2 < right_x
        assert film[lungs.left].mean() < film.mean() and film[lungs.right].mean() < film.mean()


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_only_its_region_and_stays_in_the_film_range(films, kind):
    film = films[0]
    altered, what = alter(film, kind, np.random.default_rng(1))
    assert altered.shape == film.shape and altered.dtype == np.float32
    assert what.kind == kind and what.family in FAMILIES
    changed = np.abs(altered - film) > 1e-3
    assert changed.any()
    if kind != "mirror":
        grown = np.zeros_like(what.mask)
        ys, xs = np.nonzero(what.mask)
        grown[max(0, ys.min() - 8) : ys.max() + 9, max(0, xs.min() - 8) : xs.max() + 9] = True
        assert not (changed & ~grown).any(), "pixels changed far from the recorded region"
    assert film.min() - 1e-3 <= altered.min() and altered.max() <= film.max() + 1e-3


def test_what_each_kind_does(films):
    film = films[1]
    lungs = lung_fields(film)
    rng = np.random.default_rng(3)
    mirrored, _ = alter(film, "mirror", rng)
    np.testing.assert_array_equal(mirrored, film[:, ::-1])
    coin, what = alter(film, "coin", rng)
    inside = what.mask
    assert (lungs.left | lungs.right)[inside].mean() > 0.9, "the coin lies in a lung field"
    core = ndimage.binary_erosion(inside, iterations=2)
    assert coin[core].mean() > np.percentile(film, 90), "the coin is as dense as bone or denser"
    lucent, what = alter(film, "lucent", rng)
    air_gap = film[lungs.side(what.side)].mean() - film.min()
    assert lucent[what.mask].mean() < film[what.mask].mean() - 0.15 * air_gap, "darker than the lung it was"
    opaque, what = alter(film, "opaque", rng)
    assert opaque[what.mask].mean() > film[what.mask].mean()


def test_alterations_are_seeded_and_independent_of_the_rest_of_the_set(films):
    first = make_altered_set(films[:3], seed=7)
    again = make_altered_set(films[:3], seed=7)
    more = make_altered_set(films[:5], seed=7)
    other = make_altered_set(films[:3], seed=8)
    for kind in KINDS:
        for a, b, c in zip(first.altered[kind], again.altered[kind], more.altered[kind], strict=False):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
    assert any(
        not np.array_equal(a, b)
        for kind in KINDS
        if kind != "mirror"
        for a, b in zip(first.altered[kind], other.altered[kind], strict=True)
    )
    sizes = [what.mask.sum() for what in make_altered_set(films, seed=0).alterations["coin"]]
    assert len(set(sizes)) > 1, "coin sizes are drawn, not fixed"


def test_the_benchmark_scores_each_kind_against_the_same_films(films):
    data = structural_set("dev", Films(films))

    def left_minus_right(batch: Films) -> np.ndarray:
        images = batch.at(64, "equalize").astype(np.float64)
        return images[:, :, :32].mean(axis=(1, 2)) - images[:, :, 32:].mean(axis=(1, 2))

    scores = score_set(left_minus_right, data)
    assert set(scores) == {"normal", *KINDS} and all(len(v) == len(films) for v in scores.values())
    table = structural_aucs(scores)
    assert set(table) == {*KINDS, *FAMILIES, MEAN}
    families = [table[f]["auc"] for f in FAMILIES]
    assert table[MEAN]["auc"] == pytest.approx(np.mean(families))
    # The heart makes the right half of every normal film brighter; mirroring moves it left.
    assert table["mirror"]["auc"] == 1.0
    assert table["misplaced"]["low"] <= table["misplaced"]["auc"] <= table["misplaced"]["high"]
