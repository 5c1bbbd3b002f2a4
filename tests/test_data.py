"""data.py over real HTTP on 127.0.0.1: the download path works, and every way a dataset can be
broken ends in one clear DatasetError (and exit status 1 from train_head.main), leaving nothing
behind that a later run could mistake for a complete dataset."""

import io
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import train_head
from data import SOURCE_FILE, DatasetError, ImageDataset, class_names_of, download_name, prepare_dataset
from images import load_rgb
from standins import free_port


def zip_bytes(folder: Path, prefix: str = "", separator: str = "/") -> bytes:
    """The files under `folder` as a Deflate zip, their names prefixed with `prefix`, their folders separated by
    `separator`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, prefix + separator.join(path.relative_to(folder).parts))
    return buffer.getvalue()


def with_central_directory(archive: bytes, flag_bits: int = 0, method: int | None = None) -> bytes:
    """`archive` with every central directory entry's general purpose flags OR-ed with `flag_bits` and, where given,
    its compression method replaced: how zip tools mark encrypted entries (bit 0) and Deflate64 ones (method 9)."""
    data = bytearray(archive)
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) != -1:  # a central directory entry's signature
        flags, stored_method = struct.unpack_from("<HH", data, at + 8)
        struct.pack_into("<HH", data, at + 8, flags | flag_bits, stored_method if method is None else method)
        at += 4
    return bytes(data)


@pytest.fixture(scope="module")
def dataset_zip(pizza_steak_sushi_dataset) -> bytes:
    return zip_bytes(pizza_steak_sushi_dataset)


@pytest.fixture
def local_copy(pizza_steak_sushi_dataset, tmp_path) -> Path:
    """A copy of the generated dataset that a test may break."""
    return Path(shutil.copytree(pizza_steak_sushi_dataset, tmp_path / "dataset"))


def fails_cleanly(capsys, argv: list[str], root: Path | None = None) -> str:
    """Run train_head.main, check it exits 1 with a one-paragraph error and (for downloads) kept
    nothing under `root`; return the message."""
    assert train_head.main(argv) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    if root is not None:
        assert list(root.iterdir()) == []
    return message


def test_download_extracts_and_reuses_the_dataset(serve_bytes, dataset_zip, pizza_steak_sushi_dataset, tmp_path):
    url = serve_bytes("pizza_steak_sushi.zip", dataset_zip)
    dataset_dir = prepare_dataset(url=url, root=tmp_path)
    assert dataset_dir == tmp_path / "pizza_steak_sushi"
    assert [p.name for p in tmp_path.iterdir()] == ["pizza_steak_sushi"]  # no temp files left
    assert class_names_of(dataset_dir) == ["pizza", "steak", "sushi"]
    originals = sorted(p.relative_to(pizza_steak_sushi_dataset) for p in pizza_steak_sushi_dataset.rglob("*.jpg"))
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*.jpg")) == originals
    serve_bytes("pizza_steak_sushi.zip", b"", claimed_length=0)  # a second download would now fail
    assert prepare_dataset(url=url, root=tmp_path) == dataset_dir


def test_a_url_whose_path_names_no_file_gets_a_folder_of_its_own(serve_bytes, dataset_zip, tmp_path):
    """Not the download folder itself, where "delete it to download again" would delete every other download."""
    (tmp_path / "pizza_steak_sushi").mkdir()
    url = serve_bytes("?file=pizza_steak_sushi.zip", dataset_zip)
    dataset_dir = prepare_dataset(url=url, root=tmp_path)
    assert dataset_dir.parent == tmp_path and dataset_dir.name.startswith("download-")
    assert class_names_of(dataset_dir) == ["pizza", "steak", "sushi"]
    assert download_name("https://example.com/a/..") != ".."


def test_with_a_decode_size_photos_decode_as_the_app_decodes_uploads(pizza_steak_sushi_dataset, tmp_path):
    """A big JPEG at the reduced scale serving's load_rgb(min_size=256) takes: the pixels the app serves it with."""
    dataset = tmp_path / "dataset"
    shutil.copytree(pizza_steak_sushi_dataset, dataset)
    photo = next((dataset / "train" / "pizza").glob("*.jpg"))
    Image.new("RGB", (1024, 768), (200, 120, 40)).save(photo, quality=90)
    images = ImageDataset(dataset, "train")
    index = [path for path, _ in images.samples].index(photo)
    assert images[index][0].size == (1024, 768)
    images.decode_size = 256
    served = load_rgb(photo, min_size=256)
    assert images[index][0].size == served.size == (512, 384)
    assert images[index][0].tobytes() == served.tobytes()


def test_files_left_out_for_their_extension_are_named(pizza_steak_sushi_dataset, tmp_path, capsys):
    dataset = tmp_path / "dataset"
    shutil.copytree(pizza_steak_sushi_dataset, dataset)
    photo = next((dataset / "train" / "pizza").glob("*.jpg"))
    photo.rename(photo.with_suffix(".jfif"))  # what Chrome on Windows often saves a JPEG as
    (dataset / "test" / "sushi" / ".DS_Store").write_bytes(b"debris")
    assert prepare_dataset(dataset) == dataset
    note = capsys.readouterr().err
    assert "note: 1 file(s) in the class folders are not read, as their extensions are not among .jpg" in note
    assert f"{Path('train', 'pizza', photo.with_suffix('.jfif').name)}. Convert photos" in note
    steak = sorted((dataset / "test" / "steak").iterdir())
    for photo in steak:  # a class of .heic photos alone: the note says why
        photo.rename(photo.with_suffix(".heic"))
    with pytest.raises(DatasetError, match="steak holds no images"):
        prepare_dataset(dataset)
    note = capsys.readouterr().err
    assert f"note: {1 + len(steak)} file(s)" in note and str(Path("test", "steak", f"{steak[0].stem}.heic")) in note


def test_photos_in_subfolders_of_a_class_folder_are_that_class(local_copy, capsys):
    """As torchvision's ImageFolder reads a class folder; debris at any depth stays out (were it read, its undecodable
    files would fail the check), and a link back up the tree is walked once."""
    pizza = local_copy / "train" / "pizza"
    (pizza / "more" / "even more").mkdir(parents=True)
    photos = sorted(pizza.glob("*.jpg"))
    nested = [pizza / "more" / "a.jpg", pizza / "more" / "b.jpg", pizza / "more" / "even more" / "c.jpg"]
    for photo, place in zip(photos, nested):
        photo.rename(place)
    (pizza / "more" / "menu.heic").write_bytes(b"a photo to convert")
    for debris in ("__MACOSX/._a.jpg", "more/.thumbnails/a.jpg", "more/.DS_Store"):
        (pizza / debris).parent.mkdir(exist_ok=True)
        (pizza / debris).write_bytes(b"not a photo")
    (pizza / "more" / "back up").symlink_to(pizza, target_is_directory=True)
    assert prepare_dataset(local_copy) == local_copy
    note = capsys.readouterr().err
    assert "note: 1 file(s) in the class folders are not read" in note
    assert str(Path("train", "pizza", "more", "menu.heic")) in note
    dataset = ImageDataset(local_copy, "train")
    read = [path for path, label in dataset.samples if dataset.class_names[label] == "pizza"]
    assert len(read) == len(photos) and set(nested) <= set(read)


def test_another_url_with_the_same_file_name_is_not_answered_with_the_earlier_download(
    serve_bytes, dataset_zip, tmp_path, capsys
):
    first = serve_bytes("pizza_steak_sushi.zip", dataset_zip)
    dataset_dir = prepare_dataset(url=first, root=tmp_path)
    assert (dataset_dir / SOURCE_FILE).read_text().strip() == first
    second = serve_bytes("mirror/pizza_steak_sushi.zip", dataset_zip)
    message = fails_cleanly(capsys, ["--dataset-url", second, "--download-dir", str(tmp_path)])
    assert f"{dataset_dir} holds the dataset downloaded from {first}, not from {second}" in message
    assert "Pass another --download-dir" in message
    assert prepare_dataset(url=second, root=tmp_path / "elsewhere") == tmp_path / "elsewhere" / "pizza_steak_sushi"
    assert prepare_dataset(url=first, root=tmp_path) == dataset_dir  # the earlier download is kept and still used


def test_a_folder_without_a_source_record_serves_only_the_course_urls(pizza_steak_sushi_dataset, tmp_path):
    shutil.copytree(pizza_steak_sushi_dataset, tmp_path / "pizza_steak_sushi")
    with pytest.raises(
        DatasetError, match=r"has no record of where it came from \(source_url\.txt\), so it cannot stand for"
    ):
        prepare_dataset(url="http://127.0.0.1:9/pizza_steak_sushi.zip", root=tmp_path)
    assert prepare_dataset(split="10_percent", root=tmp_path) == tmp_path / "pizza_steak_sushi"


def test_a_split_already_downloaded_is_not_fetched_again(pizza_steak_sushi_dataset, tmp_path):
    """The 20% split lives in root/pizza_steak_sushi_20_percent (named after its zip); once there,
    it is checked and used without any download."""
    shutil.copytree(pizza_steak_sushi_dataset, tmp_path / "pizza_steak_sushi_20_percent")
    assert prepare_dataset(split="20_percent", root=tmp_path) == tmp_path / "pizza_steak_sushi_20_percent"


def test_zip_of_a_wrapping_folder_is_accepted(serve_bytes, pizza_steak_sushi_dataset, tmp_path):
    url = serve_bytes("wrapped.zip", zip_bytes(pizza_steak_sushi_dataset, prefix="pizza_steak_sushi/"))
    dataset_dir = prepare_dataset(url=url, root=tmp_path)
    assert len(ImageDataset(dataset_dir, "test")) == len(list((pizza_steak_sushi_dataset / "test").rglob("*.jpg")))


def test_interrupted_download(serve_bytes, dataset_zip, tmp_path, capsys):
    half = dataset_zip[: len(dataset_zip) // 2]
    url = serve_bytes("pizza_steak_sushi.zip", half, claimed_length=len(dataset_zip))
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert f"download of {url} was interrupted: received {len(half)} of {len(dataset_zip)} bytes" in message


def test_corrupt_zip(serve_bytes, dataset_zip, tmp_path, capsys):
    corrupt = bytearray(dataset_zip)
    corrupt[len(corrupt) // 3 : len(corrupt) // 3 + 64] = bytes(64)  # damages compressed data: bad CRC
    url = serve_bytes("pizza_steak_sushi.zip", bytes(corrupt))
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert f"The file downloaded from {url} is not a valid zip archive" in message
    url = serve_bytes("cut.zip", dataset_zip[: len(dataset_zip) // 2])  # cut short, with a matching length
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert f"The file downloaded from {url} is not a valid zip archive" in message
    url = serve_bytes("page.zip", b"<html>Not Found</html>")
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert "not a valid zip archive (File is not a zip file)" in message


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (dict(flag_bits=0x1), r"is encrypted: its entry '[^']+' needs a password\. Nothing was extracted"),
        (dict(method=9), r"is compressed with a method Python's zipfile cannot read, such as Deflate64"),
    ],
    ids=["encrypted", "deflate64"],
)
def test_an_encrypted_or_deflate64_zip_says_how_to_zip_it_again(
    serve_bytes, dataset_zip, tmp_path, capsys, breakage, expected
):
    url = serve_bytes("pizza_steak_sushi.zip", with_central_directory(dataset_zip, **breakage))
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert re.search(f"The archive from {re.escape(url)} {expected}", message)
    assert "zip the dataset again without a password, with standard Deflate compression" in message


def test_a_zip_with_windows_separators_extracts_into_its_folders(
    serve_bytes, pizza_steak_sushi_dataset, tmp_path, capsys
):
    """Windows PowerShell 5.1's Compress-Archive writes train\\pizza\\0.jpg; zipfile takes those backslashes for
    separators on Windows only. An entry that climbs out with them is refused as with slashes."""
    url = serve_bytes("windows.zip", zip_bytes(pizza_steak_sushi_dataset, separator="\\"))
    dataset_dir = prepare_dataset(url=url, root=tmp_path / "data")
    assert class_names_of(dataset_dir) == ["pizza", "steak", "sushi"]
    originals = sorted(p.relative_to(pizza_steak_sushi_dataset) for p in pizza_steak_sushi_dataset.rglob("*.jpg"))
    assert sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*.jpg")) == originals
    buffer = io.BytesIO(zip_bytes(pizza_steak_sushi_dataset, separator="\\"))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("..\\escaped.txt", "outside")
    url = serve_bytes("climbing.zip", buffer.getvalue())
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path / "elsewhere")])
    assert "'..\\\\escaped.txt', which would be written outside the dataset folder; it was refused" in message
    assert list(tmp_path.rglob("escaped.txt")) == [] and list((tmp_path / "elsewhere").iterdir()) == []


def test_zip_slip_entry_is_refused(serve_bytes, dataset_zip, tmp_path, capsys):
    buffer = io.BytesIO(dataset_zip)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("../escaped.txt", "outside")
    url = serve_bytes("pizza_steak_sushi.zip", buffer.getvalue())
    root = tmp_path / "data"
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(root)])
    assert "'../escaped.txt', which would be written outside the dataset folder; it was refused" in message
    assert list(tmp_path.rglob("escaped.txt")) == [] and list(root.iterdir()) == []


def test_unreachable_url_names_it_and_the_fixes(tmp_path, capsys):
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/pizza_steak_sushi.zip"
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert f"Could not reach {url}" in message
    assert "--data-dir" in message and "--dataset-url" in message


def test_http_error_names_the_status(serve_bytes, tmp_path, capsys):
    url = serve_bytes("present.zip", b"").rsplit("/", 1)[0] + "/missing.zip"
    message = fails_cleanly(capsys, ["--dataset-url", url, "--download-dir", str(tmp_path)], root=tmp_path)
    assert f"Downloading {url} failed: the server answered 404" in message


def test_mismatched_class_folders_are_named(local_copy, capsys):
    (local_copy / "test" / "sushi").rename(local_copy / "test" / "ramen")
    message = fails_cleanly(capsys, ["--data-dir", str(local_copy)])
    assert "differ between train/ and test/: only in train: ['sushi']; only in test: ['ramen']" in message


def test_one_class_is_refused_before_any_training(local_copy, capsys):
    """With one class there is nothing to tell apart, and the outlier score's class Gaussian is the background's."""
    for subset in ("train", "test"):
        for name in ("steak", "sushi"):
            shutil.rmtree(local_copy / subset / name)
    message = fails_cleanly(capsys, ["--data-dir", str(local_copy)])
    assert "holds one class folder (pizza): telling photos apart needs at least two classes" in message


def test_hidden_folders_are_not_classes(local_copy):
    (local_copy / "train" / ".ipynb_checkpoints").mkdir()
    assert class_names_of(local_copy) == ["pizza", "steak", "sushi"]


def test_unreadable_images_are_all_named(local_copy, capsys):
    broken = local_copy / "train" / "steak" / "0.jpg"
    broken.write_bytes(b"not a jpeg")
    truncated = local_copy / "test" / "pizza" / "1.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    message = fails_cleanly(capsys, ["--data-dir", str(local_copy)])
    assert f"2 of {len(list(local_copy.rglob('*.jpg')))} images in {local_copy} cannot be read" in message
    assert str(broken) in message and str(truncated) in message


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("empty_class", "test/sushi holds no images"),
        ("no_class_folders", "test holds no class folders"),
        ("no_test_folder", "has no test/ folder"),
    ],
)
def test_empty_split(local_copy, capsys, breakage, expected):
    if breakage == "empty_class":
        for path in (local_copy / "test" / "sushi").iterdir():
            path.unlink()
    else:
        shutil.rmtree(local_copy / "test")
        if breakage == "no_class_folders":
            (local_copy / "test").mkdir()
    assert expected in fails_cleanly(capsys, ["--data-dir", str(local_copy)])


def test_a_local_zip_is_taken_by_dataset_url_and_data_dir_says_so(pizza_steak_sushi_dataset, tmp_path, capsys):
    archive = Path(shutil.make_archive(tmp_path / "food", "zip", pizza_steak_sushi_dataset))
    message = fails_cleanly(capsys, ["--data-dir", str(archive)])
    assert f"{archive} is a zip file; --data-dir takes a folder. Pass the zip as --dataset-url {archive}" in message
    dataset_dir = prepare_dataset(url=str(archive), root=tmp_path / "data")
    assert dataset_dir == tmp_path / "data" / "food" and class_names_of(dataset_dir) == ["pizza", "steak", "sushi"]
    assert prepare_dataset(url=str(archive), root=tmp_path / "data") == dataset_dir  # kept, as a download is
    missing = tmp_path / "missing.zip"
    with pytest.raises(DatasetError, match=f"--dataset-url {missing} is neither a URL nor an existing file"):
        prepare_dataset(url=str(missing), root=tmp_path / "data")


def test_missing_data_dir(tmp_path, capsys):
    assert f"The data directory {tmp_path / 'nowhere'} does not exist" in fails_cleanly(
        capsys, ["--data-dir", str(tmp_path / "nowhere")]
    )


def test_unknown_split_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="Unknown split '5_percent': choose one of 10_percent, 20_percent"):
        prepare_dataset(split="5_percent", root=tmp_path)


def test_training_and_serving_decode_a_photo_alike(tmp_path):
    """One decoder: an EXIF-rotated phone JPEG trains upright and an RGBA PNG trains on white, as they are served."""
    from classifier import DEFAULT_WEIGHTS, PRETRAINED
    from serving import Preprocessing

    sideways = Image.new("RGB", (120, 80), (200, 30, 30))
    sideways.paste((30, 30, 200), (60, 0, 120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    transparent = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
    transparent.paste((20, 160, 20, 255), (20, 20, 70, 70))
    for subset in ("train", "test"):
        for name in ("pizza", "sushi"):
            (tmp_path / subset / name).mkdir(parents=True)
        sideways.save(tmp_path / subset / "pizza" / "phone.jpg", exif=exif, quality=95)
        transparent.save(tmp_path / subset / "sushi" / "cutout.png")
    transforms = PRETRAINED[DEFAULT_WEIGHTS].transforms()
    training = ImageDataset(tmp_path, "train", transforms)
    served = Preprocessing(transforms, patch_size=16)
    for index, (path, _) in enumerate(training.samples):
        torch.testing.assert_close(training[index][0], served.preprocess(str(path)), rtol=0, atol=0)
    upright = training[[p.name for p, _ in training.samples].index("phone.jpg")][0]
    assert upright[0, :50].mean() > upright[2, :50].mean()  # red half on top after the EXIF rotation
    cutout = training[[p.name for p, _ in training.samples].index("cutout.png")][0]
    white = (1 - torch.tensor(transforms.mean)) / torch.tensor(transforms.std)
    torch.testing.assert_close(cutout[:, 0, 0], white, rtol=0, atol=1e-4)  # transparent corner on white, not black
