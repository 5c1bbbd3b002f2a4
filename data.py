"""Image-folder datasets for training: the course's pizza/steak/sushi zips (Food-101 images) or a local folder.

`prepare_dataset` downloads a course zip (or takes a local folder or zip file) and returns a folder in the
layout train/<class>/*.jpg, test/<class>/*.jpg. Photos in subfolders of a class folder (train/pizza/more/x.jpg) are
that class's too, as torchvision's ImageFolder, which the course uses, reads them. A dataset becomes visible under
its final name only after it was fully downloaded, extracted and checked (temp dir + rename), so an interrupted
run never leaves a folder that a later run would mistake for complete; it records the URL it came
from, so a different URL with the same file name is not answered with the earlier download.

Every problem with the data raises `DatasetError`, whose message is one paragraph saying what is
wrong, where, and how to fix it; scripts print it and exit non-zero instead of a traceback.
Unreadable images are not skipped: all of them are listed in one error, because training on a
silently smaller dataset would make the recorded metrics and data description wrong.
"""

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

import torch
from tqdm.auto import tqdm

from images import IMAGE_EXTENSIONS, ImageError, is_hidden, is_image, load_rgb

# The course's zips (chapters 04-09): 10% of Food-101's pizza/steak/sushi images (225 train /
# 75 test) and 20% (450 / 150). Both hold train/<class>/ and test/<class>/ at the top level.
DATASET_URLS = {
    "10_percent": "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi.zip",
    "20_percent": "https://github.com/mrdbourke/pytorch-deep-learning/raw/main/data/pizza_steak_sushi_20_percent.zip",
}
DEFAULT_SPLIT = "10_percent"  # the course's chapters 08-09 train on it
DEFAULT_ROOT = Path(__file__).resolve().parent / "data"  # git-ignored; beside the code, not the working directory
SUBSETS = ("train", "test")
# Written into a downloaded dataset folder: the URL it came from (see check_source).
SOURCE_FILE = "source_url.txt"
# The fix for a zip that zipfile cannot extract: the format every unzip tool, zipfile included, reads.
REZIP = "zip the dataset again without a password, with standard Deflate compression (zip -r, 7-Zip's Deflate)."
# How many unreadable files an error message names before it only counts the rest.
MAX_LISTED_FILES = 10


class DatasetError(Exception):
    """A dataset that cannot be downloaded, extracted or used; the message says how to fix it."""


def prepare_dataset(
    data_dir: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    url: str | None = None,
    root: str | Path = DEFAULT_ROOT,
    quiet: bool = False,
) -> Path:
    """Return a checked dataset folder: `data_dir` itself when given, else the download of `url` (a URL or the path
    of a zip file; default: the course zip of `split`) kept under `root`, downloaded only if not there yet. `quiet`:
    without the note on files left out (note_left_out), for all processes of a run but one."""
    if data_dir is not None:
        dataset_dir = Path(data_dir)
        if dataset_dir.is_file() and zipfile.is_zipfile(dataset_dir):
            raise DatasetError(
                f"{dataset_dir} is a zip file; --data-dir takes a folder. Pass the zip as --dataset-url {dataset_dir} "
                "(it is extracted into --download-dir), or unzip it and pass the folder as --data-dir."
            )
        if not dataset_dir.is_dir():
            state = "is not a folder" if dataset_dir.exists() else "does not exist"
            raise DatasetError(
                f"The data directory {dataset_dir} {state}. Pass --data-dir a folder holding "
                "train/<class>/*.jpg and test/<class>/*.jpg, or leave it out to download the dataset."
            )
        check_dataset(dataset_dir, quiet)
        return dataset_dir
    if url is None:
        if split not in DATASET_URLS:
            raise DatasetError(f"Unknown split {split!r}: choose one of {', '.join(DATASET_URLS)}.")
        url = DATASET_URLS[split]
    elif Path(url).is_file():  # a zip on disk, fetched as a file:// URL
        url = Path(url).resolve().as_uri()
    elif not urlparse(url).scheme:
        raise DatasetError(
            f"--dataset-url {url} is neither a URL nor an existing file: pass the zip's URL (https://...) or the path "
            "of a zip file."
        )
    dataset_dir = Path(root) / download_name(url)
    downloaded = not dataset_dir.is_dir()
    if downloaded:
        download_dataset(url, dataset_dir, quiet)  # checked before it takes its place
    check_source(dataset_dir, url)
    if not downloaded:
        check_dataset(dataset_dir, quiet)
    return dataset_dir


def download_name(url: str) -> str:
    """The folder a download of `url` is kept in: the zip's file name without .zip, or, where the URL's path names no
    file (https://host/?id=...), one from the URL's hash, so that it is never the download folder itself or above."""
    name = Path(urlparse(url).path).stem
    return name if name not in ("", ".", "..") else f"download-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def check_source(dataset_dir: Path, url: str) -> None:
    """Downloads are kept under the zip's file name (download_name), which two URLs can share: the URL recorded at
    download time must be `url`, or the data would not be what config.json says it trained on. A
    folder without the record (a copy put there by hand, or an older version's download) is taken
    for the course's data: it is used for the course's URLs only."""
    try:
        recorded = (dataset_dir / SOURCE_FILE).read_text().strip()
    except FileNotFoundError:
        if url in DATASET_URLS.values():
            return
        raise DatasetError(
            f"{dataset_dir} has no record of where it came from ({SOURCE_FILE}), so it cannot stand for {url}. "
            f"Pass another --download-dir for {url}, or delete {dataset_dir} to download it in its place."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(
            f"Cannot read {dataset_dir / SOURCE_FILE} ({error}). Delete {dataset_dir} to download it again."
        ) from None
    if recorded != url:
        raise DatasetError(
            f"{dataset_dir} holds the dataset downloaded from {recorded}, not from {url} (both zips have the "
            f"same file name). Pass another --download-dir for {url}, or delete {dataset_dir} to download it in its "
            "place."
        )


def download_dataset(url: str, dataset_dir: Path, quiet: bool = False) -> None:
    """Download the zip at `url`, extract and check it (check_dataset, `quiet` as there) in a temp dir beside
    `dataset_dir`, then rename it into place: the one step that makes it visible is atomic."""
    try:
        dataset_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dataset_dir.parent, prefix=f".{dataset_dir.name}-") as temp:
            archive = Path(temp) / "download.zip"
            download(url, archive)
            extracted = Path(temp) / "extracted"
            extract_zip(archive, extracted, url)
            found = dataset_root_in(extracted, url)
            check_dataset(found, quiet)
            (found / SOURCE_FILE).write_text(url + "\n")
            try:
                found.rename(dataset_dir)
            except OSError:
                if not dataset_dir.is_dir():  # else another run finished the same download first
                    raise
    except OSError as error:
        raise DatasetError(
            f"Could not store the dataset from {url} in {dataset_dir.parent} ({error}). Choose a writable "
            "--download-dir with enough free space."
        ) from None


def download(url: str, destination: Path) -> None:
    """Stream `url` into `destination` with a progress bar. urllib ends a body that stops early
    without an error, so the byte count is checked against the Content-Length header."""
    fix = (
        "Check your internet connection, or pass --data-dir with a folder holding "
        "train/<class>/*.jpg and test/<class>/*.jpg, or --dataset-url with a reachable copy of the zip."
    )
    request = urllib.request.Request(url, headers={"User-Agent": "foodvision-mini"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(destination, "wb") as file:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected is not None else None
            with tqdm(total=expected, unit="B", unit_scale=True, desc=f"Downloading {url}") as bar:
                while chunk := response.read(1 << 16):
                    file.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DatasetError(
            f"Downloading {url} failed: the server answered {error.code} {error.reason}. {fix}"
        ) from None
    except urllib.error.URLError as error:
        raise DatasetError(f"Could not reach {url} ({error.reason}). {fix}") from None
    except (OSError, HTTPException, ValueError) as error:
        raise DatasetError(f"Downloading {url} failed after {received} bytes ({error}). {fix}") from None
    if expected is not None and received != expected:
        raise DatasetError(
            f"The download of {url} was interrupted: received {received} of {expected} bytes. "
            f"Nothing was kept; run again to retry. {fix}"
        )


def extract_zip(archive: Path, destination: Path, url: str) -> None:
    """Extract `archive` into `destination`, refusing entries whose path leaves it ("zip slip")
    rather than letting zipfile silently rewrite them; CRCs are checked while extracting. Backslashes in entry names
    are folder separators, as zipfile reads them on Windows: Windows PowerShell 5.1's Compress-Archive writes them."""
    destination = destination.resolve()
    try:
        with zipfile.ZipFile(archive) as zip_file:
            entries = zip_file.infolist()
            for entry in entries:
                entry.filename = entry.filename.replace("\\", "/")  # what extraction writes; checked next
                if not (destination / entry.filename).resolve().is_relative_to(destination):
                    raise DatasetError(
                        f"The archive from {url} holds the entry {entry.orig_filename!r}, which would be written "
                        f"outside the dataset folder; it was refused and nothing was extracted. "
                        "Use a zip whose entries all lie inside it."
                    )
                if entry.flag_bits & 0x1:  # the zip format's "encrypted" bit
                    raise DatasetError(
                        f"The archive from {url} is encrypted: its entry {entry.orig_filename!r} needs a password. "
                        f"Nothing was extracted; {REZIP}"
                    )
            zip_file.extractall(destination, entries)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as error:
        raise DatasetError(
            f"The file downloaded from {url} is not a valid zip archive ({error}). Nothing was "
            "kept; check that --dataset-url points at a .zip file and run again."
        ) from None
    except NotImplementedError:  # zipfile's word for an entry it has no decompressor for
        raise DatasetError(
            f"The archive from {url} is compressed with a method Python's zipfile cannot read, such as Deflate64 "
            f"(which Windows Explorer may write). Nothing was kept; {REZIP}"
        ) from None
    except OSError as error:
        raise DatasetError(f"Extracting the archive from {url} failed ({error}). Nothing was kept.") from None


def dataset_root_in(extracted: Path, url: str) -> Path:
    """The folder holding train/ and test/: the top of the archive, or its single folder
    (zipping a folder wraps it in one more level)."""
    if all((extracted / subset).is_dir() for subset in SUBSETS):
        return extracted
    folders = [path for path in extracted.iterdir() if path.is_dir() and not is_hidden(path)]
    if len(folders) == 1 and all((folders[0] / subset).is_dir() for subset in SUBSETS):
        return folders[0]
    raise DatasetError(
        f"The archive from {url} has no train/ and test/ folders at its top level. A dataset zip "
        "holds train/<class>/*.jpg and test/<class>/*.jpg."
    )


def class_names_of(dataset_dir: str | Path) -> list[str]:
    """The sorted class folder names, which must be the same in train/ and test/: a class
    missing from one of them would silently shift every label index after it."""
    dataset_dir = Path(dataset_dir)
    layout = "A dataset folder holds train/<class>/*.jpg and test/<class>/*.jpg."
    missing = [subset for subset in SUBSETS if not (dataset_dir / subset).is_dir()]
    if missing:
        raise DatasetError(f"{dataset_dir} has no {' or '.join(missing)}/ folder. {layout}")
    classes = {
        subset: {path.name for path in (dataset_dir / subset).iterdir() if path.is_dir() and not is_hidden(path)}
        for subset in SUBSETS
    }
    for subset in SUBSETS:
        if not classes[subset]:
            raise DatasetError(f"{dataset_dir / subset} holds no class folders. {layout}")
    if classes["train"] != classes["test"]:
        only_train = sorted(classes["train"] - classes["test"]) or "none"
        only_test = sorted(classes["test"] - classes["train"]) or "none"
        raise DatasetError(
            f"The class folders of {dataset_dir} differ between train/ and test/: only in train: "
            f"{only_train}; only in test: {only_test}. Give both the same class folders."
        )
    if len(classes["train"]) == 1:
        raise DatasetError(
            f"{dataset_dir} holds one class folder ({min(classes['train'])}): telling photos apart needs at least two "
            f"classes. {layout}"
        )
    return sorted(classes["train"])


def files_below(folder: Path) -> list[Path]:
    """Every file at any depth below `folder`, sorted, as torchvision's ImageFolder reads a class folder (linked
    folders followed, each folder once), without debris (is_hidden files and folders: .DS_Store, __MACOSX/). A folder
    that cannot be read is a DatasetError, not photos silently left out."""

    def unreadable(error: OSError):
        raise DatasetError(
            f"Cannot read the folder {error.filename} ({error.strerror}). Make it readable, then run again."
        )

    files, seen = [], set()
    for directory, folders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        status = os.stat(directory)
        if (status.st_dev, status.st_ino) in seen:  # a link back up the tree
            folders.clear()
            continue
        seen.add((status.st_dev, status.st_ino))
        folders[:] = [name for name in folders if not is_hidden(Path(name))]
        files += [Path(directory, name) for name in names if not is_hidden(Path(name))]
    return sorted(path for path in files if path.is_file())


def image_files(dataset_dir: str | Path, subset: str, class_names: list[str]) -> list[tuple[Path, int]]:
    """(path, class index) of every image of `subset`, at any depth below its class folder (files_below), in a
    stable sorted order."""
    samples = []
    for label, name in enumerate(class_names):
        folder = Path(dataset_dir) / subset / name
        paths = [path for path in files_below(folder) if is_image(path)]
        if not paths:
            raise DatasetError(
                f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). Every class needs "
                "images in both train/ and test/."
            )
        samples += [(path, label) for path in paths]
    return samples


def check_dataset(dataset_dir: Path, quiet: bool = False) -> None:
    """Check the layout, the classes and that every image decodes, naming the bad files at once (the first
    MAX_LISTED_FILES, then how many more) so they can be fixed in one go. First, unless `quiet`, the note on files
    left out (note_left_out): a class folder of .heic photos alone then fails with the note beside its error."""
    class_names = class_names_of(dataset_dir)
    if not quiet:
        note_left_out(dataset_dir, class_names)
    check_images([path for subset in SUBSETS for path, _ in image_files(dataset_dir, subset, class_names)], dataset_dir)


def note_left_out(dataset_dir: Path, class_names: list[str], shown: int = 10) -> None:
    """Name on stderr the files in class folders that are not read for their extension, so that no photo is left out
    of the training and its recorded metrics without a word."""
    left_out = [
        path
        for subset in SUBSETS
        for name in class_names
        for path in files_below(dataset_dir / subset / name)
        if not is_image(path)
    ]
    if left_out:
        names = ", ".join(str(path.relative_to(dataset_dir)) for path in left_out[:shown])
        more = f" and {len(left_out) - shown} more" if len(left_out) > shown else ""
        print(
            f"note: {len(left_out)} file(s) in the class folders are not read, as their extensions are not among "
            f"{', '.join(IMAGE_EXTENSIONS)}: {names}{more}. Convert photos among them (to .jpg) to train on them.",
            file=sys.stderr,
        )


def check_images(paths: list[Path], folder: Path) -> None:
    """Every image of `folder` decodes, or a DatasetError naming those that do not (the first MAX_LISTED_FILES, then
    how many more)."""
    unreadable = []
    for path in tqdm(paths, desc=f"Checking {folder}", unit="image", leave=False):
        try:
            load_rgb(path, min_size=64)  # JPEGs decode at a reduced scale; the whole file is still read
        except ImageError as error:
            unreadable.append(f"{path} ({error})")
    if unreadable:
        listed = "; ".join(unreadable[:MAX_LISTED_FILES])
        more = f" and {len(unreadable) - MAX_LISTED_FILES} more" if len(unreadable) > MAX_LISTED_FILES else ""
        raise DatasetError(
            f"{len(unreadable)} of {len(paths)} images in {folder} cannot be read: {listed}{more}. "
            "Delete or replace these files, then run again."
        )


def load_image(path: Path, min_size: int | None = None):
    """The image at `path` decoded by the app's rules (images.load_rgb: upright, transparency on white, 16-bit grey
    rescaled; with `min_size`, a big JPEG at a reduced scale, as the app decodes uploads); an unreadable file is a
    DatasetError."""
    try:
        return load_rgb(path, min_size=min_size)
    except ImageError as error:
        raise DatasetError(f"Cannot read the image {path} ({error}). Delete or replace it, then run again.") from None


class ImageDataset(torch.utils.data.Dataset):
    """The images of one subset ("train" or "test") with their class indices, read through
    `class_names_of` so hidden folders never become classes (unlike ImageFolder). `decode_size`: the shortest side
    the transform resizes to, where it resizes first; big JPEGs then decode at a reduced scale, as the app decodes an
    upload, so a photo's features are the ones it is served with."""

    decode_size: int | None = None

    def __init__(self, dataset_dir: str | Path, subset: str, transform=None):
        self.dataset_dir = Path(dataset_dir)
        self.class_names = class_names_of(self.dataset_dir)
        self.samples = image_files(self.dataset_dir, subset, self.class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_image(path, self.decode_size)
        return (self.transform(image) if self.transform else image), label


class PhotoFolder(ImageDataset):
    """Every image under a folder, at any depth and without classes (label 0): photos of other things than the
    classes, against which train_head.py --ood-dir measures the outlier score."""

    def __init__(self, folder: str | Path, transform=None):
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder; --ood-dir takes a folder of images that are not food.")
        self.dataset_dir, self.class_names, self.transform = folder, [], transform
        self.samples = [(path, 0) for path in files_below(folder) if is_image(path)]
        if not self.samples:
            raise DatasetError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        check_images([path for path, _ in self.samples], folder)
