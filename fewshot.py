"""Few-shot linear evaluation, the ViT paper's Section 4.1 metric, on the frozen backbone's features (Eq. 4).

"Few-shot accuracies are obtained by solving a regularized least-squares regression problem that maps the
(frozen) representation of a subset of training images to {-1, 1}^K target vectors." The conventions are
big_vision's few-shot evaluator's: features standardised with the few-shot set's statistics, a constant bias
feature of 100, targets 2·onehot - 1, λ = 2^10, 1/5/10/25 photos a class drawn with 3 seeds.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

SHOTS = (1, 5, 10, 25)
SEEDS = 3
L2_REG = 2**10
BIAS = 100  # large, so that the L2 penalty barely touches the bias weight
STD_FLOOR = 1e-5  # added to each feature's std, as big_vision does: a constant or rounding-level feature stays small


def design_matrix(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Features (N, D) standardised with the few-shot set's mean and std, with the bias column appended."""
    standardised = (features.double() - mean) / std
    return torch.cat([standardised, standardised.new_full((len(standardised), 1), BIAS)], dim=1)


@dataclass
class LeastSquaresClassifier:
    """Ridge regression onto ±1 targets over standardised features with a bias column; predicts the argmax."""

    mean: Tensor  # (D,) of the few-shot set, float64
    std: Tensor  # (D,), each feature's std plus STD_FLOOR
    weights: Tensor  # (D + 1, K), the last row the bias column's

    def scores(self, features: Tensor) -> Tensor:
        """The regression's outputs (N, K), one a class."""
        return design_matrix(features, self.mean, self.std) @ self.weights

    def predict(self, features: Tensor) -> Tensor:
        return self.scores(features).argmax(dim=1)


def least_squares_classifier(
    features: Tensor, labels: Tensor, num_classes: int, l2_reg: float = L2_REG
) -> LeastSquaresClassifier:
    """W = argmin ‖XW - Y‖² + λ‖W‖², Y = 2·onehot - 1, in closed form; the dual form when there are fewer
    photos than columns, so that the solve is (N, N) rather than (D + 1, D + 1)."""
    if features.ndim != 2 or labels.shape != (features.shape[0],) or len(labels) == 0:
        raise ValueError(
            f"Expected features (N, D) and labels (N,) with N > 0, got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}."
        )
    features = features.double()
    mean = features.mean(dim=0)
    std = features.std(dim=0, correction=0) + STD_FLOOR
    design = design_matrix(features, mean, std)
    targets = 2 * torch.nn.functional.one_hot(labels.long(), num_classes).double() - 1
    photos, columns = design.shape
    if photos < columns:
        gram = design @ design.T + l2_reg * torch.eye(photos, dtype=torch.float64)
        weights = design.T @ torch.linalg.solve(gram, targets)
    else:
        gram = design.T @ design + l2_reg * torch.eye(columns, dtype=torch.float64)
        weights = torch.linalg.solve(gram, design.T @ targets)
    return LeastSquaresClassifier(mean=mean, std=std, weights=weights)


def fewshot_subsets(labels: Tensor, num_classes: int, shots: tuple[int, ...], seed: int) -> dict[int, Tensor]:
    """Training indices of k photos a class for each k in shots that every class has: each class's indices
    are shuffled once per seed and the first k taken, so smaller sets lie inside larger ones."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = []
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        shuffled.append(members[torch.randperm(len(members), generator=generator)])
    smallest = min(len(members) for members in shuffled)
    return {k: torch.cat([members[:k] for members in shuffled]) for k in shots if k <= smallest}


def fewshot_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    shots: tuple[int, ...] = SHOTS,
    seeds: int = SEEDS,
    l2_reg: float = L2_REG,
    class_names: list[str] | None = None,
) -> dict:
    """Test accuracy of least-squares classifiers fitted on k training photos a class, for each k in shots
    and each seed, and on every training photo ("all"); JSON-serialisable, for evaluation.json. A k larger
    than the smallest class is reported as unavailable, with the reason (naming the class from `class_names`)."""
    if any(not isinstance(k, int) or k < 1 for k in shots):
        raise ValueError(f"Shot counts must be positive integers, not {shots}.")
    if seeds < 1:
        raise ValueError(f"At least one seed is needed, not {seeds}.")
    if len(test_labels) == 0:
        raise ValueError("The test set is empty; few-shot accuracy needs at least one test photo.")
    for name, features, labels in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        if features.ndim != 2 or labels.shape != (len(features),) or features.shape[1] != train_features.shape[1]:
            raise ValueError(
                f"Expected {name} features (N, {train_features.shape[-1]}) and labels (N,), got "
                f"{tuple(features.shape)} and {tuple(labels.shape)}."
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"The {name} labels must be class indices (integers), not {labels.dtype}.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"The {name} labels must lie in [0, {num_classes}); got {labels.unique().tolist()}.")
        if not torch.isfinite(features).all():
            raise ValueError(f"The {name} features hold NaN or infinite values; check the backbone's output.")

    def accuracy(indices: Tensor) -> float:
        classifier = least_squares_classifier(train_features[indices], train_labels[indices], num_classes, l2_reg)
        return (classifier.predict(test_features) == test_labels).double().mean().item()

    subsets = [fewshot_subsets(train_labels, num_classes, shots, seed) for seed in range(seeds)]
    class_sizes = torch.bincount(train_labels, minlength=num_classes).tolist()
    results = {}
    for k in shots:
        if k not in subsets[0]:  # class sizes do not depend on the seed
            smallest = min(class_sizes)
            index = class_sizes.index(smallest)
            name = f"class {class_names[index]!r}" if class_names else f"class {index}"
            reason = f"{name} has only {smallest} training photos, fewer than {k}"
            results[str(k)] = {"photos_per_class": k, "accuracy_per_seed": [], "mean": None, "unavailable": reason}
            continue
        per_seed = [accuracy(subsets[seed][k]) for seed in range(seeds)]
        results[str(k)] = {"photos_per_class": k, "accuracy_per_seed": per_seed, "mean": sum(per_seed) / seeds}
    # every training photo: the same set for every seed, so one fit
    everything = accuracy(torch.arange(len(train_labels)))
    results["all"] = {"photos_per_class": class_sizes, "accuracy_per_seed": [everything], "mean": everything}
    return {"shots": results, "l2_reg": l2_reg, "bias": BIAS, "seeds": seeds}
