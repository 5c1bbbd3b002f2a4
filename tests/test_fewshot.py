"""fewshot.py on planted features: the closed form is the regularised least-squares solution in both of its forms,
the few-shot sets are nested per seed, accuracy grows toward 1 with the shots on separable classes, test photos
are standardised with the few-shot set's statistics, and a shot count no class can fill is reported."""

import json

import pytest
import torch
from torch import Tensor

from fewshot import fewshot_accuracy, fewshot_subsets, least_squares_classifier

NUM_CLASSES = 3
# big_vision's few-shot conventions, written here again so that a changed default in fewshot.py fails a test
L2_REG, BIAS = 2**10, 100


def planted_photos(per_class: list[int], dim: int, separation: float, seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian classes around means drawn once (seed 0), `separation` apart in scale, with unit noise and a
    common offset; labels shuffled so that no class sits in one block of indices."""
    means = separation * torch.randn(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(0)) + 3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(per_class)])
    labels = labels[torch.randperm(len(labels), generator=generator)]
    return means[labels] + torch.randn(len(labels), dim, generator=generator), labels


def ridge_by_lstsq(features: Tensor, labels: Tensor, l2_reg: float) -> Tensor:
    """argmin ‖XW - Y‖² + λ‖W‖² as the ordinary least squares of [X; √λ I] W ≈ [Y; 0], with X the features
    standardised by their own mean and (population) std plus 1e-5, as big_vision's evaluator does, plus a bias
    column, and Y = ±1 targets."""
    features = features.double()
    standardised = (features - features.mean(dim=0)) / (features.std(dim=0, correction=0) + 1e-5)
    design = torch.cat([standardised, torch.full((len(features), 1), float(BIAS), dtype=torch.float64)], dim=1)
    targets = -torch.ones(len(labels), NUM_CLASSES, dtype=torch.float64)
    targets[torch.arange(len(labels)), labels] = 1
    columns = design.shape[1]
    stacked_design = torch.cat([design, l2_reg**0.5 * torch.eye(columns, dtype=torch.float64)])
    stacked_targets = torch.cat([targets, torch.zeros(columns, NUM_CLASSES, dtype=torch.float64)])
    return torch.linalg.lstsq(stacked_design, stacked_targets).solution


@pytest.mark.parametrize("photos, dim", [(12, 40), (200, 8)], ids=["fewer photos than dimensions", "more photos"])
def test_closed_form_is_the_regularised_least_squares_solution(photos, dim):
    features, labels = planted_photos([photos // NUM_CLASSES] * NUM_CLASSES, dim, separation=1.0, seed=1)
    classifier = least_squares_classifier(features, labels, NUM_CLASSES, L2_REG)
    torch.testing.assert_close(classifier.weights, ridge_by_lstsq(features, labels, L2_REG), rtol=1e-7, atol=1e-9)
    # a weaker penalty gives other weights: the test sees λ
    weaker = least_squares_classifier(features, labels, NUM_CLASSES, 1.0)
    assert not torch.allclose(weaker.weights, classifier.weights, atol=1e-3)


def test_fewshot_sets_are_nested_per_seed_and_differ_between_seeds():
    _, labels = planted_photos([30, 27, 40], dim=4, separation=1.0, seed=2)
    shots = (1, 5, 10, 25)
    subsets = [fewshot_subsets(labels, NUM_CLASSES, shots, seed) for seed in range(3)]
    for per_seed in subsets:
        for k in shots:
            assert torch.bincount(labels[per_seed[k]], minlength=NUM_CLASSES).tolist() == [k] * NUM_CLASSES
            assert len(set(per_seed[k].tolist())) == NUM_CLASSES * k  # no photo twice
        for smaller, larger in zip(shots, shots[1:]):
            assert set(per_seed[smaller].tolist()) <= set(per_seed[larger].tolist())
    assert set(subsets[0][5].tolist()) != set(subsets[1][5].tolist())


def test_accuracy_grows_toward_1_with_the_shots_and_all_uses_every_training_photo():
    # nearly balanced: with λ = 2^10 the features' weights are small, and the bias weights' class priors decide
    # more of the predictions the more unequal the classes are
    train_features, train_labels = planted_photos([30, 30, 34], dim=64, separation=0.5, seed=3)
    test_features, test_labels = planted_photos([50, 50, 50], dim=64, separation=0.5, seed=4)
    report = fewshot_accuracy(train_features, train_labels, test_features, test_labels, NUM_CLASSES)
    json.dumps(report)
    assert (report["l2_reg"], report["bias"], report["seeds"]) == (L2_REG, BIAS, 3)
    shots = report["shots"]
    means = [shots[k]["mean"] for k in ("1", "5", "10", "25")]
    assert means[0] < 0.9 and means[-1] > 0.95
    assert means[0] < means[1] < means[-1]
    assert shots["all"]["photos_per_class"] == [30, 30, 34]
    everything = least_squares_classifier(train_features, train_labels, NUM_CLASSES)
    assert shots["all"]["mean"] == (everything.predict(test_features) == test_labels).double().mean().item() > 0.95

    # each seed's figure is the accuracy of the classifier fitted on that seed's subset
    for seed in range(3):
        subset = fewshot_subsets(train_labels, NUM_CLASSES, (5,), seed)[5]
        classifier = least_squares_classifier(train_features[subset], train_labels[subset], NUM_CLASSES)
        accuracy = (classifier.predict(test_features) == test_labels).double().mean().item()
        assert shots["5"]["accuracy_per_seed"][seed] == accuracy
    assert shots["5"]["mean"] == pytest.approx(sum(shots["5"]["accuracy_per_seed"]) / 3)


def test_test_photos_are_standardised_with_the_fewshot_sets_statistics():
    train_features, train_labels = planted_photos([10, 10, 10], dim=48, separation=0.3, seed=5)
    test_features, _ = planted_photos([20, 20, 20], dim=48, separation=0.3, seed=6)
    classifier = least_squares_classifier(train_features, train_labels, NUM_CLASSES)
    torch.testing.assert_close(classifier.mean, train_features.double().mean(dim=0))
    # one photo alone is predicted as in a batch: its own statistics play no part
    alone = torch.cat([classifier.predict(photo.unsqueeze(0)) for photo in test_features])
    assert torch.equal(alone, classifier.predict(test_features))
    # a constant added to every feature, training and test alike, is removed by the standardisation
    shifted = least_squares_classifier(train_features + 50, train_labels, NUM_CLASSES)
    torch.testing.assert_close(shifted.scores(test_features + 50), classifier.scores(test_features), atol=1e-3, rtol=0)
    assert torch.equal(shifted.predict(test_features + 50), classifier.predict(test_features))


def test_a_constant_feature_does_not_break_the_standardisation():
    features, labels = planted_photos([5, 5, 5], dim=6, separation=1.0, seed=7)
    features[:, 2] = 0.1  # 0.1 has no exact binary form, so its mean may differ from it by rounding
    classifier = least_squares_classifier(features, labels, NUM_CLASSES)
    assert torch.isfinite(classifier.weights).all()
    assert classifier.weights[2].abs().max() < 1e-6  # the feature carries nothing, so it gets no weight


def test_inputs_that_cannot_be_evaluated_say_why():
    """Mismatched lengths dropped a photo silently, NaN features gave chance accuracy without a word, and float
    labels or other widths raised torch's own errors."""
    train_features, train_labels = planted_photos([10, 10, 10], dim=8, separation=1.0, seed=3)
    test_features, test_labels = planted_photos([3, 3, 3], dim=8, separation=1.0, seed=4)
    nan_test = test_features.clone()
    nan_test[0, 0] = float("nan")
    cases = [
        ((train_features, train_labels[:-1], test_features, test_labels), r"train features \(N, 8\) and labels"),
        ((train_features, train_labels, test_features[:, :7], test_labels), r"test features \(N, 8\)"),
        ((train_features, train_labels.float(), test_features, test_labels), "class indices"),
        ((train_features, train_labels, nan_test, test_labels), "test features hold NaN"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            fewshot_accuracy(*arguments, NUM_CLASSES)


def test_a_shot_count_no_class_can_fill_is_reported_not_raised():
    train_features, train_labels = planted_photos([30, 12, 40], dim=16, separation=1.0, seed=8)
    test_features, test_labels = planted_photos([5, 5, 5], dim=16, separation=1.0, seed=9)
    report = fewshot_accuracy(train_features, train_labels, test_features, test_labels, NUM_CLASSES, shots=(1, 12, 25))
    json.dumps(report)
    assert len(report["shots"]["12"]["accuracy_per_seed"]) == 3  # a class with exactly k photos can fill k shots
    unavailable = report["shots"]["25"]
    assert unavailable["accuracy_per_seed"] == [] and unavailable["mean"] is None
    assert "class 1 has only 12 training photos, fewer than 25" in unavailable["unavailable"]
    assert report["shots"]["all"]["mean"] is not None
    photos = (train_features, train_labels, test_features, test_labels)
    named = fewshot_accuracy(*photos, NUM_CLASSES, shots=(25,), class_names=["pizza", "steak", "sushi"])
    assert named["shots"]["25"]["unavailable"] == "class 'steak' has only 12 training photos, fewer than 25"


def test_invalid_arguments_say_what_is_wrong():
    features, labels = planted_photos([3, 3, 3], dim=4, separation=1.0, seed=10)
    with pytest.raises(ValueError, match="positive integers"):
        fewshot_accuracy(features, labels, features, labels, NUM_CLASSES, shots=(0, 1))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fewshot_accuracy(features, labels + 1, features, labels, NUM_CLASSES)
    with pytest.raises(ValueError, match="test set is empty"):
        fewshot_accuracy(features, labels, features[:0], labels[:0], NUM_CLASSES)
