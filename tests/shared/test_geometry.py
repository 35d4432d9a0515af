import numpy as np
import pytest

from shared.geometry import align_rmse, apply_similarity, trajectory_length, umeyama


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.standard_normal((50, 3))
    rotation, translation = _rotation(rng), np.array([1.0, -2.0, 0.5])
    dst = 2.5 * src @ rotation.T + translation
    s, R, t = umeyama(src, dst)
    assert s == pytest.approx(2.5)
    np.testing.assert_allclose(R, rotation, atol=1e-9)
    np.testing.assert_allclose(t, translation, atol=1e-9)
    np.testing.assert_allclose(apply_similarity(src, s, R, t), dst, atol=1e-9)


def test_umeyama_without_scale_is_rigid():
    rng = np.random.default_rng(2)
    src = rng.standard_normal((20, 3))
    rotation = _rotation(rng)
    s, R, _ = umeyama(src, 3 * src @ rotation.T, with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(R, rotation, atol=1e-9)


def test_umeyama_never_returns_a_reflection():
    rng = np.random.default_rng(3)
    src = rng.standard_normal((30, 3))
    _, R, _ = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(R) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "src, dst, message",
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), "at least 3"),
        (np.zeros((5, 3)), np.zeros((4, 3)), "differ in shape"),
        (np.zeros((5, 2)), np.zeros((5, 2)), "shape"),
        (np.ones((5, 3)), np.zeros((5, 3)), "same place"),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), "NaN"),
    ],
)
def test_umeyama_rejects_bad_input(src, dst, message):
    with pytest.raises(ValueError, match=message):
        umeyama(src, dst)


def test_align_rmse_ignores_similarity_and_measures_noise():
    rng = np.random.default_rng(4)
    truth = rng.uniform(-5, 5, (200, 3))
    estimated = 0.3 * truth @ _rotation(rng).T + 7.0
    assert align_rmse(estimated, truth) < 1e-9
    noise = rng.normal(0, 0.01, truth.shape)
    # Noise in the estimate is measured in the units of the truth (scale 1/0.3).
    rmse = align_rmse(estimated + noise, truth)
    assert rmse == pytest.approx(0.01 * np.sqrt(3) / 0.3, rel=0.15)


def test_trajectory_length():
    assert trajectory_length(np.zeros((1, 3))) == 0.0
    assert trajectory_length([[0, 0, 0], [3, 4, 0], [3, 4, 2]]) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        trajectory_length(np.zeros((4, 2)))
