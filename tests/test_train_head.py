"""train_head.py end to end on generated images with the random `torch_home` backbone: the head
really learns, the reports agree with each other, the tiny checkpoint reloads (from a folder and
from a Hub repo id in an offline cache) and predicts what the trained model predicted, and broken
checkpoints raise CheckpointError saying which file and what is wrong."""

import inspect
import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from PIL import Image

import train_head
from classifier import CONFIG_FILE, build_feature_extractor, load_classifier, load_outlier_score
from data import load_image
from standins import free_port, write_food_dataset

# Chance is 1/3; standins' seeded data and random backbone give a head far above this bar. The margin
# allows for other torch builds' rounding, not for a head that fails.
MIN_TEST_ACCURACY = 0.8


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_head_learns_and_reports_agree(trained_head_checkpoint):
    config = read_json(trained_head_checkpoint / CONFIG_FILE)
    history = read_json(trained_head_checkpoint / "metrics.json")["history"]
    evaluation = read_json(trained_head_checkpoint / "evaluation.json")
    assert config["class_names"] == ["pizza", "steak", "sushi"]
    assert (config["backbone"], config["weights"], config["image_size"]) == ("vit_b_16", "IMAGENET1K_V1", 224)
    assert config["training"]["epochs"] == len(history) == 10
    assert config["metrics"]["test_acc"] == history[-1]["test_acc"] == pytest.approx(evaluation["test_accuracy"])
    assert evaluation["test_accuracy"] >= MIN_TEST_ACCURACY
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    confusion = torch.tensor(evaluation["confusion_matrix"]["rows_true_columns_predicted"])
    assert confusion.sum() == config["data"]["test_images"] == len(evaluation["predictions"])
    assert confusion.trace() / confusion.sum() == pytest.approx(evaluation["test_accuracy"])
    per_class = (confusion.diag() / confusion.sum(dim=1)).tolist()
    assert list(evaluation["per_class_accuracy"].values()) == pytest.approx(per_class)
    wrong = [p for p in evaluation["predictions"] if p["true"] != p["predicted"]]
    assert len(evaluation["most_wrong"]) == min(len(wrong), train_head.MOST_WRONG)
    assert [w["probability"] for w in evaluation["most_wrong"]] == sorted(
        (p["probability"] for p in wrong), reverse=True
    )[: train_head.MOST_WRONG]

    assert (trained_head_checkpoint / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    printed = (trained_head_checkpoint.parent / "stdout.txt").read_text()
    epochs = re.findall(
        r"Epoch: (\d+) \| train_loss: [\d.]+ \| train_acc: [\d.]+ \| test_loss: [\d.]+ \| test_acc: ([\d.]+)", printed
    )
    assert [int(e) for e, _ in epochs] == list(range(1, 11))
    assert float(epochs[-1][1]) == pytest.approx(history[-1]["test_acc"], abs=5e-5)


def test_evaluation_summary_counts_and_ranks_the_mistakes():
    logits = torch.tensor([[4.0, 0, 0], [0, 3, 0], [0, 0, 1], [2, 0, 0], [0, 5, 0], [0, 0, 2]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    paths = [f"test/{i}.jpg" for i in range(6)]
    summary = train_head.evaluation_summary(logits, labels, ["a", "b", "c"], paths)
    assert summary["test_accuracy"] == pytest.approx(2 / 6)
    assert summary["per_class_accuracy"] == pytest.approx(dict(a=0.5, b=0.0, c=0.5))
    assert summary["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert [(w["path"], w["true"], w["predicted"]) for w in summary["most_wrong"]] == [
        ("test/4.jpg", "c", "b"),
        ("test/1.jpg", "a", "b"),
        ("test/3.jpg", "b", "a"),
        ("test/2.jpg", "b", "c"),
    ]
    assert summary["most_wrong"][0]["probability"] == pytest.approx(torch.tensor([0.0, 5, 0]).softmax(0)[1].item())


def test_reloaded_checkpoint_predicts_what_training_predicted(trained_head_checkpoint, head_dataset):
    model, transforms, config = load_classifier(trained_head_checkpoint)
    predictions = read_json(trained_head_checkpoint / "evaluation.json")["predictions"]
    wrong = [p for p in predictions if p["true"] != p["predicted"]]
    chosen = predictions[::10] + wrong  # every class at a tenth of the backbone passes, and the mistakes
    images = torch.stack([transforms(load_image(head_dataset / p["path"], transforms.resize_size[0])) for p in chosen])
    with torch.inference_mode():
        probabilities = model(images).softmax(dim=1)
    assert [config["class_names"][i] for i in probabilities.argmax(dim=1)] == [p["predicted"] for p in chosen]
    expected = torch.tensor([list(p["probabilities"].values()) for p in chosen])
    torch.testing.assert_close(probabilities, expected, atol=1e-4, rtol=0)


def test_main_downloads_trains_saves_and_reports_a_failed_push(
    serve_bytes, pizza_steak_sushi_dataset, torch_home, tmp_path, capsys, monkeypatch
):
    """The whole command line path: download over HTTP, train with every flag set, save; then the
    Hub upload fails (a closed local port stands in for an unreachable huggingface.co, so no test
    run can publish anything) and says the checkpoint is kept."""
    small = tmp_path / "small"
    for subset, count in (("train", 2), ("test", 1)):
        for folder in sorted((pizza_steak_sushi_dataset / subset).iterdir()):
            (small / subset / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, small / subset / folder.name)
    url = serve_bytes("pizza_steak_sushi.zip", Path(shutil.make_archive(tmp_path / "small", "zip", small)).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    output = tmp_path / "my checkpoint"  # a space, as in a home folder "Jane Doe": the hint still runs as printed
    argv = [
        "--dataset-url",
        url,
        "--download-dir",
        str(tmp_path / "data"),
        "--output",
        str(output),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--push-to-hub",
        "someone/foodvision-mini",
    ]
    assert train_head.main(argv) == 1
    printed = capsys.readouterr()
    assert "Epoch: 2 | train_loss:" in printed.out
    assert (
        f"the checkpoint is saved in {output}, but publishing it to the Hugging Face Hub repo "
        "someone/foodvision-mini failed" in printed.err
    )
    assert f"`hf upload someone/foodvision-mini '{output}' .`" in printed.err
    assert sorted(p.name for p in (tmp_path / "data" / "pizza_steak_sushi" / "test").iterdir()) == [
        "pizza",
        "steak",
        "sushi",
    ]
    config = read_json(output / CONFIG_FILE)
    assert config["data"] == dict(source=url, split=None, train_images=6, test_images=3)
    assert config["training"] | dict(epochs=2, batch_size=4, lr=0.01, seed=1) == config["training"]
    assert len(read_json(output / "metrics.json")["history"]) == 2
    assert f"Test accuracy {config['metrics']['test_acc']:.4f} on 3 images" in (output / "README.md").read_text()


def test_mistakes_on_the_command_line_fail_before_the_download(tmp_path, capsys):
    """A bad --push-to-hub, --lr or --output is refused before the dataset or the weights are fetched (the dataset
    URL here answers nothing), not after minutes of work."""
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("keep me")
    vit_run = tmp_path / "vit-from-scratch"  # train_vit.py's output: a config.json, but no head's
    vit_run.mkdir()
    (vit_run / CONFIG_FILE).write_text(json.dumps({"vit_config": {}, "class_names": ["pizza"], "epoch": 3}))
    nowhere = f"http://127.0.0.1:{free_port()}/pizza_steak_sushi.zip"
    common = ["--dataset-url", nowhere, "--download-dir", str(tmp_path / "data")]
    for mistake, message in (
        (["--push-to-hub", "someone/foodvision--mini"], "Cannot have -- or .."),
        (["--lr", "-0.001"], "argument --lr: must be a positive finite number, got -0.001"),
        (["--lr", "0"], "argument --lr: must be a positive finite number, got 0.0"),
        (["--lr", "nan"], "argument --lr: must be a positive finite number, got nan"),
        (["--lr", "inf"], "argument --lr: must be a positive finite number, got inf"),
        (["--lr", "1e999"], "argument --lr: must be a positive finite number, got inf"),
        (["--lr", "fast"], "argument --lr: not a number: 'fast'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train_head.main([*common, *mistake])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="lr must be a positive finite number, got inf"):
        train_head.train_head(dataset_url=nowhere, download_dir=tmp_path / "data", lr=float("inf"))
    for mistake, message in (
        (["--output", str(unrelated)], f"{unrelated} already exists and is not a checkpoint folder"),
        (["--output", str(unrelated / "todo.txt")], f"{unrelated / 'todo.txt'} is a file"),
        (["--output", str(unrelated / "todo.txt" / "head")], f"{unrelated / 'todo.txt'} is a file, so no folder"),
        (["--output", str(vit_run)], f"{vit_run} already exists and is not a checkpoint folder of train_head.py's"),
    ):
        assert train_head.main([*common, *mistake]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and (unrelated / "todo.txt").read_text() == "keep me"
    assert json.loads((vit_run / CONFIG_FILE).read_text())["epoch"] == 3


def test_a_photo_a_class_and_a_mistyped_ood_folder_fail_before_the_backbone_pass(tmp_path, capsys):
    """Both are refused before the weights load: one photo a class leaves the outlier score nothing to fit, which
    outliers.fit found only after the backbone pass and the head's training, and then saved nothing."""
    dataset = write_food_dataset(tmp_path / "one-each", 1, 1)
    assert train_head.main(["--data-dir", str(dataset), "--output", str(tmp_path / "head")]) == 1
    assert "holds 3 photos for 3 classes. The outlier score is fitted to how" in capsys.readouterr().err
    nowhere = f"http://127.0.0.1:{free_port()}/pizza_steak_sushi.zip"
    flags = ["--dataset-url", nowhere, "--download-dir", str(tmp_path / "data"), "--ood-dir", str(tmp_path / "no")]
    assert train_head.main(flags) == 1
    assert f"{tmp_path / 'no'} is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "head").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("lr", [1e35, 1e38])
def test_a_training_that_diverges_is_an_error_not_a_head(lr):
    """A head whose loss or weights are NaN or infinite would answer every photo with NaN probabilities; 1e38 is
    beyond what Adam's first step can hold in float32."""
    features = torch.randn(12, 768, generator=torch.Generator().manual_seed(0)) * 100
    labels = torch.arange(12) % 3
    with pytest.raises(ValueError, match=r"Training diverged in epoch \d+ with lr .*nothing was saved.*lower --lr"):
        train_head.fit(torch.nn.Linear(768, 3), (features, labels), (features, labels), 10, lr, 4, seed=0)


def test_the_backbone_pass_takes_the_cpus_batch_on_the_cpu_and_the_heads_on_a_gpu():
    assert train_head.feature_batch_size("cpu", 32) == train_head.CPU_FEATURE_BATCH < 32
    assert train_head.feature_batch_size("cuda:0", 32) == 32


def test_command_line_defaults_are_train_heads():
    parameters = inspect.signature(train_head.train_head).parameters
    args = vars(train_head.parse_args([]))
    for name in ("split", "weights", "epochs", "lr", "batch_size", "seed", "download_dir", "device"):
        assert args[name] == parameters[name].default, name
    assert args["output"] == parameters["output_dir"].default
    assert parameters["weights"].default == inspect.signature(build_feature_extractor).parameters["weights"].default


def test_a_local_dataset_is_recorded_by_its_name_not_the_path_that_names_the_user(
    trained_head_checkpoint, head_dataset
):
    config = read_json(trained_head_checkpoint / CONFIG_FILE)
    assert config["data"]["source"] == f"a local folder, {head_dataset.name}"
    published = (trained_head_checkpoint / CONFIG_FILE).read_text() + (
        trained_head_checkpoint / "README.md"
    ).read_text()
    assert str(head_dataset.parent) not in published


def test_a_dataset_url_is_recorded_without_its_credentials_or_signature():
    signed = "https://someone:secret@storage.example.com/data/food.zip?X-Amz-Credential=me&X-Amz-Signature=abc#top"
    assert train_head.data_source(None, signed, "ignored") == "https://storage.example.com/data/food.zip"
    drive = "https://drive.google.com/uc?export=download&id=1AbC"
    assert train_head.data_source(None, drive, "ignored") == drive
    assert train_head.data_source(None, "file:///srv/alice/food.zip", "ignored") == "a local file, food.zip"
    assert train_head.data_source(None, None, "20_percent") == train_head.DATASET_URLS["20_percent"]


def test_training_fits_the_outlier_score_and_measures_it_against_the_ood_folder(trained_head_checkpoint):
    """train_head.py --ood-dir: the relative Mahalanobis score, fitted on the cached training features, sets the
    threshold on the test split and reports AUROC and FPR at 95% TPR against the drawn non-food photos; the
    config says what travels in model.safetensors and how far int8 moves the score."""
    evaluation = read_json(trained_head_checkpoint / "evaluation.json")["outliers"]
    config = read_json(trained_head_checkpoint / CONFIG_FILE)
    stored = load_outlier_score(trained_head_checkpoint, config, 768)
    assert stored.threshold == pytest.approx(evaluation["threshold"]) == pytest.approx(config["outliers"]["threshold"])
    assert stored.size_bytes() == config["outliers"]["size_bytes"]
    assert stored.shrinkage == pytest.approx(config["outliers"]["shrinkage"])
    ood = evaluation["ood"]
    assert ood["photos"] == 30 and ood["auroc"] > 0.8 and ood["fpr_at_95_tpr"] < 0.9, ood
    assert ood["scores"]["p50"] > evaluation["test_scores"]["p50"]  # non-food sits further out than the food
    if config["int8"]["measured"]:
        moved = config["int8"]["outlier_score"]  # at most 2 of the 60 test photos cross the threshold
        assert moved["decisions_changed"] <= 2 and 0 < moved["max_difference"] < moved["threshold"]
    assert "Outlier score: relative Mahalanobis" in (trained_head_checkpoint / "README.md").read_text()


def test_few_shot_linear_evaluation_is_reported_plotted_and_beside_the_linear_head(trained_head_checkpoint):
    """The paper's Section 4.1 metric on the cached features: 1, 5, 10 and 25 photos a class over 3 seeds (a shot
    count over a class's photos is reported as unavailable: test_fewshot.py), every photo, and the trained head's
    accuracy alongside."""
    fewshot = read_json(trained_head_checkpoint / "evaluation.json")["fewshot"]
    shots = fewshot["shots"]
    for k in ("1", "5", "10", "25"):
        assert len(shots[k]["accuracy_per_seed"]) == 3 and shots[k]["mean"] == pytest.approx(
            sum(shots[k]["accuracy_per_seed"]) / 3
        )
    assert shots["all"]["photos_per_class"] == [60, 60, 60] and shots["25"]["mean"] > 1 / 3
    metrics = read_json(trained_head_checkpoint / CONFIG_FILE)["metrics"]
    assert fewshot["linear_head_accuracy"] == pytest.approx(metrics["test_acc"])
    assert (fewshot["l2_reg"], fewshot["bias"], fewshot["seeds"]) == (1024, 100, 3)
    with Image.open(trained_head_checkpoint / "fewshot.png") as plot:
        assert plot.width > 200 and plot.height > 150
    config = read_json(trained_head_checkpoint / CONFIG_FILE)
    assert config["fewshot"] == {"seeds": 3, "accuracy": {k: result["mean"] for k, result in shots.items()}}
    assert "Few-shot linear evaluation" in (trained_head_checkpoint / "README.md").read_text()
