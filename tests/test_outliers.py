"""outliers.py on planted features: three class Gaussians stand in for pizza/steak/sushi, and outliers are drawn
from other distributions. The relative Mahalanobis score separates them, beats the plain class distance when
many directions carry no class information, keeps the 95% rule on fresh photos, stays finite with fewer photos
than dimensions, and survives a safetensors round trip; broken stored tensors raise OutlierScoreError."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load, save
from torch import Tensor

from outliers import OutlierScore, OutlierScoreError, auroc, fit, fpr_at_tpr, ledoit_wolf, summary

NUM_CLASSES = 3
DIM = 32


@dataclass
class Food:
    """Class Gaussians sharing an anisotropic covariance (mixing @ mixingᵀ) around a common offset, as the
    class-token features of a layer-normalised backbone share a mean."""

    offset: Tensor
    class_means: Tensor
    mixing: Tensor

    def noise(self, count: int, generator: torch.Generator) -> Tensor:
        return torch.randn(count, self.mixing.shape[0], generator=generator, dtype=torch.float64) @ self.mixing.T

    def photos(self, per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.arange(len(self.class_means)).repeat_interleave(per_class)
        features = self.class_means[labels] + self.noise(len(labels), generator)
        return features.float(), labels


def planted_food(dim: int = DIM, seed: int = 0) -> Food:
    generator = torch.Generator().manual_seed(seed)
    offset = 5 * torch.randn(dim, generator=generator, dtype=torch.float64)
    class_means = offset + 2 * torch.randn(NUM_CLASSES, dim, generator=generator, dtype=torch.float64)
    # singular values from 0.2 to 1 in random directions: the within-class spread differs by direction
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    mixing = rotation * torch.linspace(0.2, 1.0, dim, dtype=torch.float64)
    return Food(offset, class_means, mixing)


def outliers_of_kind(food: Food, kind: str, count: int, generator: torch.Generator) -> Tensor:
    dim = len(food.offset)
    if kind == "shifted cluster":
        direction = torch.randn(dim, generator=generator, dtype=torch.float64)
        features = food.offset + 4 * direction / direction.norm() + food.noise(count, generator)
    elif kind == "other scale":
        photos, _ = food.photos(count // NUM_CLASSES + 1, generator)
        features = food.offset + 3 * (photos[:count].double() - food.offset)
    elif kind == "noise":  # isotropic, around the food's mean and with its overall variance
        photos = food.photos(count, generator)[0].double()
        spread = photos.var(dim=0).mean().sqrt()
        features = photos.mean(dim=0) + spread * torch.randn(count, dim, generator=generator, dtype=torch.float64)
    elif kind == "between classes":  # midpoints of two class means, on no class
        pairs = torch.tensor([[0, 1], [1, 2], [0, 2]])[torch.arange(count) % 3]
        features = food.class_means[pairs].mean(dim=1) + food.noise(count, generator)
    return features.float()


@pytest.fixture(scope="module")
def food() -> Food:
    return planted_food()


@pytest.fixture(scope="module")
def fitted(food) -> OutlierScore:
    features, labels = food.photos(100, torch.Generator().manual_seed(1))
    score = fit(features, labels, NUM_CLASSES)
    score.set_threshold(food.photos(50, torch.Generator().manual_seed(2))[0])
    return score


def test_fit_estimates_each_class_mean_and_the_background_mean(food):
    features, labels = food.photos(40, torch.Generator().manual_seed(3))
    # unequal classes, so that weighting the between-class scatter by each class's share, not 1/K, is seen
    keep = torch.cat([(labels == label).nonzero().flatten()[:count] for label, count in enumerate((10, 25, 40))])
    features, labels = features[keep], labels[keep]
    score = fit(features, labels, NUM_CLASSES)
    for label in range(NUM_CLASSES):
        torch.testing.assert_close(score.class_means[label], features[labels == label].mean(dim=0))
    torch.testing.assert_close(score.background_mean, features.mean(dim=0))
    within, _ = ledoit_wolf(features.double() - score.class_means.double()[labels])
    identity = torch.eye(DIM, dtype=torch.float64)  # up to the precisions' float32 storage
    torch.testing.assert_close(score.class_precision.double() @ within, identity, rtol=0, atol=1e-5)
    # the background's covariance: the shrunk within-class one plus the rest of the sample covariance, S_0 - S_w
    centred = features.double() - features.double().mean(dim=0)
    class_centred = features.double() - score.class_means.double()[labels]
    rest = (centred.T @ centred - class_centred.T @ class_centred) / len(features)
    torch.testing.assert_close(score.background_precision.double() @ (within + rest), identity, rtol=0, atol=1e-5)


def test_score_is_the_relative_mahalanobis_distance(fitted, food):
    """min_k MD_k(x) - MD_0(x) written out with the stored means and precisions, in float64."""
    features = food.photos(20, torch.Generator().manual_seed(4))[0].double()

    def mahalanobis(mean, precision):
        centred = features - mean.double()
        return ((centred @ precision.double()) * centred).sum(dim=1)

    class_distances = torch.stack([mahalanobis(mean, fitted.class_precision) for mean in fitted.class_means])
    expected = class_distances.min(dim=0).values - mahalanobis(fitted.background_mean, fitted.background_precision)
    torch.testing.assert_close(fitted.score(features.float()).double(), expected, rtol=1e-4, atol=1e-3)


KINDS = ["shifted cluster", "other scale", "noise", "between classes"]


@pytest.mark.parametrize("kind", KINDS)
def test_relative_score_separates_planted_outliers(fitted, food, kind):
    generator = torch.Generator().manual_seed(5)
    in_scores = fitted.score(food.photos(100, generator)[0])
    out_scores = fitted.score(outliers_of_kind(food, kind, 300, generator))
    assert auroc(in_scores, out_scores) > 0.95
    assert fpr_at_tpr(in_scores, out_scores) < 0.2


def test_relative_score_beats_the_plain_class_distance_when_most_directions_carry_no_class():
    """Two directions tell the classes apart; 62 others vary for every photo alike. Their Mahalanobis terms add
    chi-square noise to min_k MD_k that swamps photos lying between the classes; MD_0 has the same terms and the
    difference cancels them (Ren et al.'s argument). Whitening makes their variance irrelevant: their number counts."""
    generator = torch.Generator().manual_seed(6)
    dim, per_class = 64, 300
    angles = torch.arange(NUM_CLASSES) * 2 * math.pi / NUM_CLASSES
    class_centres = 4 * torch.stack([angles.cos(), angles.sin()], dim=1)

    def photos(centres: Tensor) -> Tensor:
        nuisance = torch.randn(len(centres), dim - 2, generator=generator)
        return torch.cat([centres + torch.randn(len(centres), 2, generator=generator), nuisance], dim=1)

    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    score = fit(photos(class_centres[labels]), labels, NUM_CLASSES)
    held_out = photos(class_centres[labels])
    between = photos(torch.zeros(len(labels), 2))

    def plain(features: Tensor) -> Tensor:
        centred = features.unsqueeze(1) - score.class_means
        return torch.einsum("nkd,de,nke->nk", centred, score.class_precision, centred).min(dim=1).values

    relative_auroc = auroc(score.score(held_out), score.score(between))
    plain_auroc = auroc(plain(held_out), plain(between))
    assert relative_auroc > 0.95
    assert relative_auroc > plain_auroc + 0.2


def test_threshold_accepts_95_percent_of_a_fresh_in_distribution_split(fitted, food):
    calibration = food.photos(700, torch.Generator().manual_seed(7))[0]
    fresh = food.photos(700, torch.Generator().manual_seed(8))[0]
    score = OutlierScore.from_tensors(fitted.to_tensors(), DIM, NUM_CLASSES)
    score.set_threshold(calibration)
    assert (~score.is_outlier(score.score(calibration))).double().mean() >= 0.95
    accepted = (~score.is_outlier(score.score(fresh))).double().mean().item()
    # the fresh split's acceptance varies with both splits' draws: binomial, 4 standard deviations
    tolerance = 4 * math.sqrt(0.95 * 0.05 * (1 / len(calibration) + 1 / len(fresh)))
    assert abs(accepted - 0.95) < tolerance
    assert score.is_outlier(score.threshold + 1e-3) and not score.is_outlier(score.threshold)


def test_shrinkage_makes_30_photos_in_768_dimensions_invertible_and_the_score_still_separates():
    """Fewer photos than dimensions, as with ViT-B/16's 768; a background covariance shrunk on its own (far less
    than the within-class one) would let MD_0 outgrow min_k MD_k away from the food and call outliers food."""
    food = planted_food(dim=768, seed=9)
    features, labels = food.photos(10, torch.Generator().manual_seed(10))
    centred = features.double() - features.double().mean(dim=0)
    assert torch.linalg.cholesky_ex(centred.T @ centred / len(centred)).info > 0  # singular: no inverse alone
    score = fit(features, labels, NUM_CLASSES)
    assert 0 < score.shrinkage <= 1
    for precision in (score.class_precision, score.background_precision):
        assert torch.linalg.cholesky_ex(precision.double()).info == 0  # positive definite
    generator = torch.Generator().manual_seed(11)
    in_scores = score.score(food.photos(30, generator)[0])
    assert torch.isfinite(in_scores).all()
    for kind in KINDS:
        assert auroc(in_scores, score.score(outliers_of_kind(food, kind, 60, generator))) > 0.95, kind


def test_ledoit_wolf_matches_its_defining_formulas():
    """S* = (b²/d²)·mI + (1 - b²/d²)·S with m, d², b̄², b² evaluated directly from their definitions, on samples
    that shrink partly (b̄² < d²) and samples where the clip b² = min(b̄², d²) shrinks all the way."""
    dim = 5
    identity = torch.eye(dim, dtype=torch.float64)

    def norm_squared(matrix: Tensor) -> Tensor:  # Ledoit & Wolf's ‖A‖² = tr(AAᵀ)/p
        return (matrix @ matrix.T).trace() / dim

    intensities = []
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        scales = torch.linspace(1, 1 + 0.3 * seed, dim, dtype=torch.float64)  # isotropic to clearly anisotropic
        rows = torch.randn(20, dim, generator=generator, dtype=torch.float64) * scales
        rows -= rows.mean(dim=0)
        sample_covariance = rows.T @ rows / len(rows)
        m = (sample_covariance @ identity.T).trace() / dim
        d2 = norm_squared(sample_covariance - m * identity)
        b_bar2 = sum(norm_squared(torch.outer(row, row) - sample_covariance) for row in rows) / len(rows) ** 2
        expected_intensity = (min(b_bar2, d2) / d2).item()

        shrunk, intensity = ledoit_wolf(rows)
        assert intensity == pytest.approx(expected_intensity, rel=1e-10)
        expected = expected_intensity * m * identity + (1 - expected_intensity) * sample_covariance
        torch.testing.assert_close(shrunk, expected)
        intensities.append(intensity)
    assert min(intensities) < 0.5 and max(intensities) == 1  # both sides of the clip were tested


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_fpr_at_tpr_match_brute_force_counts(seed):
    generator = torch.Generator().manual_seed(seed)
    # few distinct values, so that ties are common
    in_scores = torch.randint(0, 8, (int(torch.randint(5, 40, (), generator=generator)),), generator=generator).float()
    out_scores = torch.randint(
        2, 10, (int(torch.randint(5, 40, (), generator=generator)),), generator=generator
    ).float()

    pairs = out_scores.unsqueeze(1) - in_scores.unsqueeze(0)
    expected_auroc = ((pairs > 0).double() + 0.5 * (pairs == 0).double()).mean().item()
    assert auroc(in_scores, out_scores) == pytest.approx(expected_auroc, abs=1e-12)

    for tpr in (0.5, 0.8, 0.95):
        # the ROC curve's first point, sweeping the threshold upward, that accepts a fraction tpr of the photos
        for threshold in torch.cat([in_scores, out_scores]).unique():
            if (in_scores <= threshold).double().mean() >= tpr:
                break
        expected_fpr = (out_scores <= threshold).double().mean().item()
        assert fpr_at_tpr(in_scores, out_scores, tpr) == pytest.approx(expected_fpr, abs=1e-12)


def test_auroc_counts_which_side_the_outliers_are_on():
    low, high = torch.arange(10.0), torch.arange(10.0) + 100
    assert auroc(low, high) == 1 and auroc(high, low) == 0 and auroc(low, low) == 0.5


def test_summary_reports_the_quantiles_and_is_json_serialisable():
    scores = torch.randn(101, generator=torch.Generator().manual_seed(13))
    ordered = scores.sort().values.tolist()
    statistics = summary(scores)
    # 101 values: the 5th, 50th and 95th percentiles fall exactly on the 6th, 51st and 96th smallest
    assert [statistics[name] for name in ("min", "p5", "p50", "p95", "max")] == pytest.approx(
        [ordered[0], ordered[5], ordered[50], ordered[95], ordered[100]]
    )
    assert statistics["mean"] == pytest.approx(sum(ordered) / 101)
    assert statistics["std"] == pytest.approx(math.sqrt(sum((s - statistics["mean"]) ** 2 for s in ordered) / 101))
    json.dumps(statistics)


def test_safetensors_round_trip_gives_identical_scores(fitted, food):
    features = food.photos(30, torch.Generator().manual_seed(14))[0]
    loaded = OutlierScore.from_tensors(load(save(fitted.to_tensors())), DIM, NUM_CLASSES)
    assert torch.equal(loaded.score(features), fitted.score(features))
    assert loaded.threshold == fitted.threshold
    assert loaded.shrinkage == pytest.approx(fitted.shrinkage, rel=1e-6)
    assert all(name.startswith("outliers.") for name in fitted.to_tensors())
    # two (D, D) precisions, K means, one background mean and two scalars, in float32
    assert fitted.size_bytes() == 4 * (2 * DIM * DIM + NUM_CLASSES * DIM + DIM + 2)


def corrupted(tensors: dict[str, Tensor], name: str, value: Tensor | None) -> dict[str, Tensor]:
    changed = dict(tensors)
    if value is None:
        del changed[name]
    else:
        changed[name] = value
    return changed


def test_broken_stored_tensors_raise_outlier_score_error(fitted):
    stored = load(save(fitted.to_tensors()))
    nan_mean = stored["outliers.background_mean"].clone()
    nan_mean[3] = math.nan
    cases = [
        (corrupted(stored, "outliers.class_precision", None), DIM, NUM_CLASSES, "no outliers.class_precision"),
        (stored, DIM + 1, NUM_CLASSES, rf"class_means has shape \({NUM_CLASSES}, {DIM}\).*{DIM + 1}-dimensional"),
        (stored, DIM, NUM_CLASSES + 1, rf"class_means has shape.*{NUM_CLASSES + 1} classes"),
        (corrupted(stored, "outliers.background_mean", nan_mean), DIM, NUM_CLASSES, "background_mean holds NaN"),
        (corrupted(stored, "outliers.class_precision", -torch.eye(DIM)), DIM, NUM_CLASSES, "not positive definite"),
    ]
    for tensors, feature_dim, num_classes, problem in cases:
        with pytest.raises(OutlierScoreError, match=problem):
            OutlierScore.from_tensors(tensors, feature_dim, num_classes)


def test_misuse_raises_errors_that_say_what_is_wrong(fitted, food):
    features, labels = food.photos(5, torch.Generator().manual_seed(15))
    with pytest.raises(ValueError, match=rf"shape \(N, {DIM}\)"):
        fitted.score(features[:, :-1])
    with pytest.raises(ValueError, match=r"Classes \[2\] have no training photo"):
        fit(features[labels < 2], labels[labels < 2], NUM_CLASSES)
    with pytest.raises(ValueError, match="within-class covariance is singular"):
        fit(food.class_means[labels].float(), labels, NUM_CLASSES)  # every photo of a class alike
    unset = fit(features, labels, NUM_CLASSES)
    with pytest.raises(OutlierScoreError, match="set_threshold"):
        unset.to_tensors()
    with pytest.raises(ValueError, match="set_threshold"):
        unset.is_outlier(0.0)
    with pytest.raises(ValueError, match="at least two classes, not 1"):
        fit(features, torch.zeros_like(labels), 1)  # one class: every score would be exactly 0
    with pytest.raises(ValueError, match="class indices"):
        fit(features, labels.float(), NUM_CLASSES)
    with pytest.raises(ValueError, match="NaN or infinite scores"):
        unset.set_threshold(torch.cat([features, torch.full_like(features[:1], float("nan"))]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc(torch.tensor([0.0, float("nan")]), torch.tensor([1.0]))


def test_a_nan_score_counts_as_an_outlier_not_as_food(fitted):
    """NaN is never above a threshold: a NaN feature vector would otherwise pass as food, without a word."""
    nan = fitted.score(torch.full((1, DIM), float("nan")))
    assert torch.isnan(nan).all() and fitted.is_outlier(nan).all() and fitted.is_outlier(float("nan"))
    assert not fitted.is_outlier(fitted.threshold) and fitted.is_outlier(fitted.threshold + 1)
