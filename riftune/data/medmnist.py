"""MedMNIST v3 2D datasets: the official file table, local lookup and MD5-checked download.

A flag is a MedMNIST 2D dataset name with an optional image size suffix: ``breastmnist``
(28×28), ``breastmnist_64``, ``retinamnist_128``, ``pathmnist_224``. Files are looked up,
in order, in ``data_root``, ``$RIFTUNE_DATA`` and ``~/.medmnist``. A file found nowhere is
downloaded from its official Zenodo record into the first of those folders, written to a
temporary file, checked against its official MD5, and only then renamed into place.

Tasks: binary and multi-class flags load as they are. RetinaMNIST is an ordinal-regression
task (5 diabetic-retinopathy grades); it is trained and evaluated as 5-class classification.
ChestMNIST is multi-label (14 findings, each 0/1 per image); it loads as a multi-label task.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from riftune.errors import UserError

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
RECORD_URL = "https://zenodo.org/records/10519652/files/{file}?download=1"
ENV_VAR = "RIFTUNE_DATA"
DEFAULT_ROOT = Path("~/.medmnist")


@dataclass(frozen=True)
class _Flag:
    task: str
    labels: tuple[str, ...]
    md5: dict[int, str]


# The official MedMNIST v3 2D table, copied from `medmnist.INFO` of the PyPI package
# medmnist 3.0.2 (medmnist/info.py). Every `url*` entry there equals RECORD_URL with the file
# name `<flag>.npz` (28×28) or `<flag>_<size>.npz`; the MD5s below are its `MD5*` entries.
# the 11 organs of OrganAMNIST, OrganCMNIST and OrganSMNIST (axial, coronal, sagittal views)
_ORGAN_LABELS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)

FLAGS: dict[str, _Flag] = {
    "pathmnist": _Flag(
        task="multi-class",
        labels=(
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        md5={
            28: "a8b06965200029087d5bd730944a56c1",
            64: "55aa9c1e0525abe5a6b9d8343a507616",
            128: "ac42d08fb904d92c244187169d1fd1d9",
            224: "2c51a510bcdc9cf8ddb2af93af1eadec",
        },
    ),
    "chestmnist": _Flag(
        task="multi-label, binary-class",
        labels=(
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        md5={
            28: "02c8a6516a18b556561a56cbdd36c4a8",
            64: "9de6cd0b934ebb5b7426cfba5efbae16",
            128: "db107e5590b27930b62dbaf558aebee3",
            224: "45bd33e6f06c3e8cdb481c74a89152aa",
        },
    ),
    "dermamnist": _Flag(
        task="multi-class",
        labels=(
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        md5={
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
    ),
    "octmnist": _Flag(
        task="multi-class",
        labels=("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        md5={
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
    ),
    "pneumoniamnist": _Flag(
        task="binary-class",
        labels=("normal", "pneumonia"),
        md5={
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
    "retinamnist": _Flag(
        task="ordinal-regression",
        labels=("0", "1", "2", "3", "4"),
        md5={
            28: "bd4c0672f1bba3e3a89f0e4e876791e4",
            64: "afda852cc34dcda56f86ad2b2457dbcc",
            128: "e48e916a24454daf90583d4e6efb1a18",
            224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
        },
    ),
    "breastmnist": _Flag(
        task="binary-class",
        labels=("malignant", "normal, benign"),
        md5={
            28: "750601b1f35ba3300ea97c75c52ff8f6",
            64: "742edef2a1fd1524b2efff4bd7ba9364",
            128: "363e4b3f8d712e9b5de15470a2aaadf1",
            224: "b56378a6eefa9fed602bb16d192d4c8b",
        },
    ),
    "bloodmnist": _Flag(
        task="multi-class",
        labels=(
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        md5={
            28: "7053d0359d879ad8a5505303e11de1dc",
            64: "2b94928a2ae4916078ca51e05b6b800b",
            128: "adace1e0ed228fccda1f39692059dd4c",
            224: "b718ff6835fcbdb22ba9eacccd7b2601",
        },
    ),
    "tissuemnist": _Flag(
        task="multi-class",
        labels=(
            "Collecting Duct, Connecting Tubule",
            "Distal Convoluted Tubule",
            "Glomerular endothelial cells",
            "Interstitial endothelial cells",
            "Leukocytes",
            "Podocytes",
            "Proximal Tubule Segments",
            "Thick Ascending Limb",
        ),
        md5={
            28: "ebe78ee8b05294063de985d821c1c34b",
            64: "123ece2eba09d0aa5d698fda57103344",
            128: "61b955355d7425a89687b06cca3ce0c2",
            224: "b077128c4a949f0a4eb01517f9037b9c",
        },
    ),
    "organamnist": _Flag(
        task="multi-class",
        labels=_ORGAN_LABELS,
        md5={
            28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
            64: "2dcccc29b88e6da5a01161ef20cda288",
            128: "eeae80d0a227a8d099027e1b3cfd3b60",
            224: "50747347e05c87dd3aaf92c49f9f3170",
        },
    ),
    "organcmnist": _Flag(
        task="multi-class",
        labels=_ORGAN_LABELS,
        md5={
            28: "b9ceb9546e10131b32923c5bbeaea2b1",
            64: "3ce34a8724ea6f548e6db4744d03b6a9",
            128: "773c1f009daa3fe5d9a2a201b2a7ed94",
            224: "050f5e875dc056f6768abf94ec9995d1",
        },
    ),
    "organsmnist": _Flag(
        task="multi-class",
        labels=_ORGAN_LABELS,
        md5={
            28: "9ab87b696fb54e2a387ebe992d6ed5f1",
            64: "53a6d115339d874c25e309a994ff46d3",
            128: "ded0c5fa01a95dc4978b956f613e9b8e",
            224: "b354719e553fbbb2513d5533f52a4cb1",
        },
    ),
}

_FLAG_RE = re.compile(r"^(?P<flag>[a-z0-9]+?)(?:_(?P<size>\d+))?$")


@dataclass(frozen=True)
class MedMNISTFile:
    """One official MedMNIST file: its flag, image size, file name, URL and MD5."""

    flag: str
    size: int
    file_name: str
    url: str
    md5: str

    @property
    def name(self) -> str:
        """The spec that names this file: ``breastmnist`` (28×28) or ``breastmnist_64``."""
        return self.flag if self.size == 28 else f"{self.flag}_{self.size}"

    @property
    def info(self) -> _Flag:
        """The flag's task and class names."""
        return FLAGS[self.flag]


def is_flag(spec: str) -> bool:
    """Whether ``spec`` looks like a MedMNIST flag (known name, any size suffix)."""
    match = _FLAG_RE.match(spec.strip().lower())
    return bool(match) and (match["flag"] in FLAGS or match["flag"].endswith("3d"))


def parse_flag(spec: str) -> MedMNISTFile:
    """Parse ``flag`` or ``flag_size`` into the official file it names.

    Raises:
        UserError: unknown flag or size, or a 3D flag.
    """
    match = _FLAG_RE.match(spec.strip().lower())
    flag = match["flag"] if match else spec
    if match and flag.endswith("3d"):
        raise UserError(f"{spec!r} is a 3D MedMNIST dataset; only the 2D ones are supported")
    if not match or flag not in FLAGS:
        raise UserError(f"unknown MedMNIST dataset {spec!r}; choose one of: {', '.join(FLAGS)}")
    size = int(match["size"]) if match["size"] else 28
    if size not in SIZES:
        raise UserError(
            f"MedMNIST has no size {size} for {flag}; use one of {', '.join(map(str, SIZES))}"
        )
    file_name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    return MedMNISTFile(
        flag, size, file_name, RECORD_URL.format(file=file_name), FLAGS[flag].md5[size]
    )


def search_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for MedMNIST files, in order: data_root, $RIFTUNE_DATA, ~/.medmnist."""
    roots = [data_root, os.environ.get(ENV_VAR) or None, DEFAULT_ROOT]
    return [Path(root).expanduser() for root in roots if root]


def locate(
    file: MedMNISTFile, data_root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """The local path of ``file``, downloading it into the first search root if it is missing.

    Raises:
        UserError: missing and ``download`` is off, or the download failed (network error or
            MD5 mismatch); the message names the file, its URL and where to put it.
    """
    roots = search_roots(data_root)
    for root in roots:
        if (root / file.file_name).is_file():
            return root / file.file_name
    target = roots[0] / file.file_name
    where = f"put {file.file_name} (from {file.url}) in {roots[0]} or pass --data-root"
    if not download:
        raise UserError(f"{file.file_name} not found in {', '.join(map(str, roots))}; {where}")
    try:
        fetch(file.url, file.md5, target)
    except OSError as err:  # URLError, timeouts, unwritable folder
        reason = getattr(err, "reason", None) or err
        raise UserError(f"could not download {file.file_name} ({reason}); {where}") from err
    return target


def fetch(url: str, md5: str, target: Path, chunk_bytes: int = 1 << 20) -> None:
    """Download ``url`` to ``target`` atomically, accepting it only if its MD5 matches.

    The bytes go to a temporary file beside ``target``, are flushed and fsynced, checked,
    and renamed into place; on any failure the temporary file is deleted.

    Raises:
        UserError: the downloaded bytes do not have the expected MD5.
        OSError: network or file-system errors (``urllib.error.URLError`` included).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(chunk_bytes):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise UserError(
                f"download of {target.name} failed its MD5 check (got {digest.hexdigest()}, "
                f"expected {md5}); try again or download it from {url}"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
