"""Tiny synthetic YOLO datasets, written by the tests themselves (nothing is downloaded).

Detection: coloured rectangles on noise, one class, YOLO label files and a data yaml.
Classification: an ImageFolder tree (``train/<class>/*.png``, ``val/<class>/*.png``).
Also used by ``benchmarks/bench_ultralytics.py``, which imports this file by path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64


def offline_env(home: Path | None = None) -> Path:
    """Set Ultralytics' offline environment (PRODUCT.md §2) unless it is already set.

    For scripts outside pytest (the benchmark); under pytest, conftest.py has done this.
    Must run before ultralytics is first imported. Returns the config folder.
    """
    if os.environ.get("YOLO_CONFIG_DIR"):
        return Path(os.environ["YOLO_CONFIG_DIR"])
    home = home or Path(tempfile.mkdtemp(prefix="eventhooks-yolo-"))
    os.environ.update(
        YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0", YOLO_VERBOSE="0", YOLO_CONFIG_DIR=str(home),
        CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg",
    )  # fmt: skip
    settings = home / "Ultralytics"
    settings.mkdir(parents=True, exist_ok=True)
    flags = ["sync", "hub", "clearml", "comet", "dvc", "mlflow", "neptune", "raytune"]
    flags += ["tensorboard", "wandb", "vscode_msg", "openvino_msg"]
    (settings / "settings.json").write_text(json.dumps(dict.fromkeys(flags, False)))
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, settings / name)
    return home


def _image(
    rng: np.random.Generator, box: tuple[int, int, int, int] | None, colour: int
) -> Image.Image:
    pixels = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 0
        pixels[y0:y1, x0:x1, colour] = 230
    else:
        pixels[..., colour] += 150
    return Image.fromarray(pixels)


def detection_dataset(root: Path, images: int = 8, seed: int = 0) -> Path:
    """Write ``images`` training and 4 validation images with boxes; returns the data yaml."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", 4)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            w, h = (int(v) for v in rng.integers(16, 40, size=2))
            x0, y0 = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
            _image(rng, (x0, y0, x0 + w, y0 + h), 0).save(root / "images" / split / f"{i}.png")
            cx, cy = (x0 + w / 2) / SIZE, (y0 + h / 2) / SIZE
            label = f"0 {cx:.6f} {cy:.6f} {w / SIZE:.6f} {h / SIZE:.6f}\n"
            (root / "labels" / split / f"{i}.txt").write_text(label)
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    return data


def classification_dataset(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """Write a two-class ImageFolder tree (red and green images); returns its root folder."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for colour, name in enumerate(("red", "green")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _image(rng, None, colour).save(folder / f"{i}.png")
    return root


def predict_images(root: Path, count: int = 2, seed: int = 1) -> list[Path]:
    """Write ``count`` images to predict on."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"predict{i}.png"
        _image(rng, (8, 8, 40, 40), 0).save(path)
        paths.append(path)
    return paths
