"""Is this even food? The relative Mahalanobis distance (Ren et al. 2021, arXiv:2106.09022) on the frozen
backbone's features y = LN(z_L^0) (Eq. 4) flags photos unlike pizza, steak and sushi.

One Gaussian per class with a shared covariance models the training classes; one Gaussian over all features,
whatever their class, models the background. The score min_k MD_k(x) - MD_0(x) subtracts the background's
distance, which cancels the directions every photo varies along alike and leaves the ones that tell the classes
apart. With a few hundred photos in 768 dimensions the sample covariances are singular, so the within-class one,
S_w, is shrunk toward a scaled identity by Ledoit & Wolf's (2004) analytic intensity. The background's is that
shrunk S_w plus the between-class scatter B, as S_0 = S_w + B for the sample covariances. Shrunk on its own, S_0
would get a far smaller intensity (B's large eigenvalues make it look well spread already), the shared directions
would no longer cancel, and far from every class MD_0 would outgrow min_k MD_k: the farthest photos would score as
the most food-like.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

PREFIX = "outliers."  # stored beside the head's tensors in the same safetensors file


class OutlierScoreError(ValueError):
    """Stored outlier-score tensors that are missing, mis-shaped or corrupt; the message says which (the checkpoint's
    loader, classifier.py, adds the fix)."""


def ledoit_wolf(centred: Tensor) -> tuple[Tensor, float]:
    """Ledoit & Wolf's (2004) shrunk covariance of centred rows x_k (n, p) in float64, and its intensity δ.

    With ⟨A, B⟩ = tr(ABᵀ)/p, ‖A‖² = ⟨A, A⟩, S = XᵀX/n, m = ⟨S, I⟩, d² = ‖S - mI‖², b̄² = n⁻² Σ_k ‖x_k x_kᵀ - S‖²
    and b² = min(b̄², d²), the estimator is δ·mI + (1 - δ)·S with δ = b²/d²: positive definite if δ > 0 and S ≠ 0.
    """
    samples, dim = centred.shape
    centred = centred.double()
    covariance = centred.T @ centred / samples
    scale = covariance.trace() / dim  # m
    dispersion = ((covariance**2).sum() - dim * scale**2) / dim  # d² = (‖S‖_F² - 2m·tr S + p·m²)/p, and tr S = pm
    # Σ_k ‖x_k x_kᵀ - S‖² = Σ_k ‖x_k‖⁴ - n‖S‖² because Σ_k x_k x_kᵀ = nS: no (p, p) matrix per sample
    sample_spread = ((centred**2).sum(dim=1) ** 2).sum() - samples * (covariance**2).sum()
    estimation_error = torch.minimum(sample_spread / (samples**2 * dim), dispersion)  # b²
    # d² = 0 means S already is mI: shrinking fully changes nothing; the clamp only removes rounding below 0
    intensity = 1.0 if dispersion == 0 else max(0.0, (estimation_error / dispersion).item())
    shrunk = intensity * scale * torch.eye(dim, dtype=torch.float64) + (1 - intensity) * covariance
    return shrunk, intensity


def _precision(covariance: Tensor) -> Tensor:
    """The inverse of a positive definite covariance, through its Cholesky factor."""
    return torch.cholesky_inverse(torch.linalg.cholesky(covariance))


def _whitening(precision: Tensor) -> Tensor:
    """W with precision = WWᵀ, so that (x - μ)ᵀ Σ⁻¹ (x - μ) = ‖(x - μ) W‖² for row vectors x, μ."""
    return torch.linalg.cholesky(precision.double()).float()


def above_threshold(score: Tensor | float, threshold: float) -> Tensor | bool:
    """Whether a score (or each of a tensor of scores) lies above the threshold. A NaN score (from NaN features) is no
    evidence of food, so it counts as above: `>` would call it food."""
    return ~(score <= threshold) if isinstance(score, Tensor) else not score <= threshold


def _acceptance_threshold(in_scores: Tensor, accept: float) -> float:
    """The smallest in-distribution score t with at least a fraction `accept` of in_scores ≤ t."""
    if not 0 < accept < 1:
        raise ValueError(f"The accepted fraction must lie strictly between 0 and 1, not {accept}.")
    if in_scores.numel() == 0:
        raise ValueError("There are no in-distribution scores to set a threshold on; pass at least one photo.")
    rank = math.ceil(round(accept * in_scores.numel(), 9))  # round: 0.95 * 100 is 95.00000000000001
    return in_scores.flatten().sort().values[rank - 1].item()


@dataclass
class OutlierScore:
    """Class Gaussians with a tied covariance and a background Gaussian over the backbone's features (N, D).

    class_means: (K, D); class_precision and background_precision: (D, D) inverses of the shrunk covariances;
    threshold: the score above which a photo is an outlier (None until set_threshold); shrinkage: the
    Ledoit-Wolf intensity chosen for the within-class covariance, which both Gaussians' covariances contain.
    """

    class_means: Tensor
    class_precision: Tensor
    background_mean: Tensor
    background_precision: Tensor
    threshold: float | None
    shrinkage: float
    # score() needs only these: whitened class means and one matrix that whitens for both Gaussians at once
    _whitening: Tensor = field(init=False, repr=False)
    _whitened_class_means: Tensor = field(init=False, repr=False)
    _whitened_background_mean: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        class_whitening = _whitening(self.class_precision)
        background_whitening = _whitening(self.background_precision)
        self._whitening = torch.cat([class_whitening, background_whitening], dim=1)
        self._whitened_class_means = self.class_means @ class_whitening
        self._whitened_background_mean = self.background_mean @ background_whitening

    @property
    def feature_dim(self) -> int:
        return self.class_means.shape[1]

    @property
    def num_classes(self) -> int:
        return self.class_means.shape[0]

    def score(self, features: Tensor) -> Tensor:
        """min_k MD_k(x) - MD_0(x) for each row of features (N, D): larger means less like the training classes."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"The outlier score takes features of shape (N, {self.feature_dim}), not {tuple(features.shape)}; "
                "pass the backbone's class-token features, one row a photo."
            )
        whitened = features.float() @ self._whitening
        class_part, background_part = whitened.split(self.feature_dim, dim=1)
        # differences, not cdist's ‖a‖² + ‖b‖² - 2ab, which cancels in float32 when the means lie far out
        class_distances = ((class_part.unsqueeze(1) - self._whitened_class_means) ** 2).sum(dim=2)  # (N, K)
        background_distance = ((background_part - self._whitened_background_mean) ** 2).sum(dim=1)
        return class_distances.min(dim=1).values - background_distance

    def set_threshold(self, in_distribution_features: Tensor, accept: float = 0.95) -> float:
        """Set and return the threshold that accepts a fraction `accept` of held-out in-distribution photos
        (their score's 95th percentile by default): the usual rule, which needs no outlier photos."""
        scores = self.score(in_distribution_features)
        if not torch.isfinite(scores).all():
            raise ValueError("The held-out features give NaN or infinite scores; check the backbone's output.")
        self.threshold = _acceptance_threshold(scores, accept)
        return self.threshold

    def is_outlier(self, score: Tensor | float) -> Tensor | bool:
        """Whether a score (or each of a tensor of scores) lies above the threshold (above_threshold)."""
        if self.threshold is None:
            raise ValueError("The outlier threshold is not set; call set_threshold on held-out in-distribution photos.")
        return above_threshold(score, self.threshold)

    def _tensors(self) -> dict[str, Tensor]:
        threshold = math.nan if self.threshold is None else self.threshold
        return {
            f"{PREFIX}class_means": self.class_means.float().contiguous(),
            f"{PREFIX}class_precision": self.class_precision.float().contiguous(),
            f"{PREFIX}background_mean": self.background_mean.float().contiguous(),
            f"{PREFIX}background_precision": self.background_precision.float().contiguous(),
            f"{PREFIX}threshold": torch.tensor(threshold, dtype=torch.float32),
            f"{PREFIX}shrinkage": torch.tensor(self.shrinkage, dtype=torch.float32),
        }

    def to_tensors(self) -> dict[str, Tensor]:
        """Everything the score needs, as float32 tensors named "outliers.*" for a safetensors file."""
        if self.threshold is None:
            raise OutlierScoreError("The outlier threshold is not set; call set_threshold before saving the score.")
        return self._tensors()

    def size_bytes(self) -> int:
        """Bytes the stored tensors take (two (D, D) precisions dominate)."""
        return sum(tensor.nbytes for tensor in self._tensors().values())

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], feature_dim: int, num_classes: int) -> "OutlierScore":
        """The score that to_tensors stored, checked against the model's feature size and number of classes."""
        shapes = {
            "class_means": (num_classes, feature_dim),
            "class_precision": (feature_dim, feature_dim),
            "background_mean": (feature_dim,),
            "background_precision": (feature_dim, feature_dim),
            "threshold": (),
            "shrinkage": (),
        }
        missing = [PREFIX + name for name in shapes if PREFIX + name not in tensors]
        if missing:
            raise OutlierScoreError(f"The checkpoint has no {', '.join(missing)}; it holds no outlier score.")
        for name, shape in shapes.items():
            tensor = tensors[PREFIX + name]
            if tuple(tensor.shape) != shape:
                raise OutlierScoreError(
                    f"{PREFIX}{name} has shape {tuple(tensor.shape)}, but a model with {feature_dim}-dimensional "
                    f"features and {num_classes} classes needs {shape}; the score was fitted on another model."
                )
            if not torch.isfinite(tensor).all():
                raise OutlierScoreError(f"{PREFIX}{name} holds NaN or infinite values; the checkpoint is corrupt.")
        stored = {name: tensors[PREFIX + name].float() for name in shapes}
        try:
            return cls(
                class_means=stored["class_means"],
                class_precision=stored["class_precision"],
                background_mean=stored["background_mean"],
                background_precision=stored["background_precision"],
                threshold=stored["threshold"].item(),
                shrinkage=stored["shrinkage"].item(),
            )
        except torch.linalg.LinAlgError:
            raise OutlierScoreError(
                f"{PREFIX}class_precision or {PREFIX}background_precision is not positive definite, so it is no "
                f"inverse covariance; the checkpoint is corrupt."
            ) from None


def fit(features: Tensor, labels: Tensor, num_classes: int) -> OutlierScore:
    """Fit the class Gaussians (the shrunk covariance of the class-centred features, shared) and the background
    Gaussian to training features (N, D) with labels (N,) in [0, num_classes); the threshold is left for
    set_threshold."""
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"Expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}."
        )
    if num_classes < 2:  # one class's Gaussian is the background's: every score would be 0, and no photo flagged
        raise ValueError(f"The relative Mahalanobis score needs at least two classes, not {num_classes}.")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"The labels must be class indices (integers), not {labels.dtype}.")
    if not torch.isfinite(features).all():
        raise ValueError("The features hold NaN or infinite values; check the backbone's output.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must lie in [0, {num_classes}); got values from {labels.min()} to {labels.max()}.")
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"Classes {empty} have no training photo, so their Gaussians cannot be fitted; add photos.")
    features = features.double()
    class_means = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
    class_means /= counts.unsqueeze(1)
    background_mean = features.mean(dim=0)
    within, shrinkage = ledoit_wolf(features - class_means[labels])
    if torch.linalg.cholesky_ex(within).info:
        raise ValueError(
            f"The within-class covariance is singular even after Ledoit-Wolf shrinkage (intensity {shrinkage:.3g}): "
            "the photos of each class are too few or too alike to vary in every direction. Train on more photos."
        )
    # B = Σ_k π_k (μ_k - μ_0)(μ_k - μ_0)ᵀ, with π_k the fraction of photos in class k
    class_offsets = class_means - background_mean
    between = class_offsets.T @ (class_offsets * (counts / len(labels)).unsqueeze(1))
    return OutlierScore(
        class_means=class_means.float(),
        class_precision=_precision(within).float(),
        background_mean=background_mean.float(),
        background_precision=_precision(within + between).float(),
        threshold=None,
        shrinkage=shrinkage,
    )


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """The probability that an outlier scores higher than an in-distribution photo, ties counting half: the
    Mann-Whitney U of the outliers' ranks among all scores, divided by the number of pairs."""
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ValueError("AUROC needs at least one in-distribution and one outlier score.")
    if not (torch.isfinite(in_scores).all() and torch.isfinite(out_scores).all()):
        raise ValueError("AUROC of NaN or infinite scores is not defined; check the features they came from.")
    scores = torch.cat([in_scores.flatten(), out_scores.flatten()]).double()
    _, group, group_sizes = torch.unique(scores, return_inverse=True, return_counts=True)
    # tied scores share the mean of the 1-based ranks they span
    mean_ranks = group_sizes.cumsum(0) - (group_sizes - 1) / 2
    out_rank_sum = mean_ranks[group[in_scores.numel() :]].sum().item()
    pairs_won = out_rank_sum - out_scores.numel() * (out_scores.numel() + 1) / 2
    return pairs_won / (in_scores.numel() * out_scores.numel())


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, tpr: float = 0.95) -> float:
    """OpenOOD's FPR@95: the fraction of outliers accepted (scored at or below the threshold) when the threshold
    is the lowest that accepts a fraction `tpr` of the in-distribution photos. Lower is better."""
    if out_scores.numel() == 0:
        raise ValueError("FPR needs at least one outlier score.")
    return (out_scores <= _acceptance_threshold(in_scores, tpr)).double().mean().item()


def summary(scores: Tensor) -> dict[str, float]:
    """The scores' mean, standard deviation, 5th/50th/95th percentiles, minimum and maximum, for evaluation.json."""
    if scores.numel() == 0:
        raise ValueError("There are no scores to summarise.")
    scores = scores.flatten().double()
    p5, p50, p95 = torch.quantile(scores, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    return {
        "mean": scores.mean().item(),
        "std": scores.std(correction=0).item(),
        "p5": p5,
        "p50": p50,
        "p95": p95,
        "min": scores.min().item(),
        "max": scores.max().item(),
    }
