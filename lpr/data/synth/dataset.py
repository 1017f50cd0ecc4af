"""Writing a synthetic data set: COCO JSON per split and JPEG images, deterministic by seed."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from lpr.data.synth.camera import jpeg_quality
from lpr.data.synth.fonts import SynthError
from lpr.data.synth.plate import CATEGORY_ID, PLATE_CLASSES
from lpr.data.synth.scene import HELDOUT_FACES, HELDOUT_SCHEMES, Styles, bbox, render_image
from lpr.outputs import OutputError, make_dir

SPLITS = ("train", "val", "val_heldout")  # val_heldout: styles held out of train and val


def _make_one(args: tuple[int, str, int, int, int, Styles, str]) -> tuple[str, list[dict]]:
    seed, split, index, width, height, styles, image_dir = args
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, instances = render_image(rng, width, height, styles)
    file_name = f"{split}/{index:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality(rng)])
    if not ok:
        raise RuntimeError(f"could not encode {file_name}")
    Path(image_dir, file_name).write_bytes(buf.tobytes())
    anns = []
    for inst in instances:
        x1, y1, x2, y2 = bbox(inst.polygons)
        area = sum(float(cv2.contourArea(np.asarray(p, np.float32).reshape(-1, 2))) for p in inst.polygons)
        ann = {
            "category_id": CATEGORY_ID[inst.name],
            "segmentation": inst.polygons,
            "area": round(area, 2),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "iscrowd": 0,
        }
        if inst.text is not None:
            ann["text"] = inst.text  # the plate's class text, e.g. "123a4567"
        if inst.style is not None:
            ann["style"] = inst.style  # faces, type-slot script and colour scheme it was drawn with
        anns.append(ann)
    return file_name, anns


def _write_split(
    out: Path, split: str, count: int, *, styles: Styles, settings: dict, workers: int, progress: bool
) -> Path:
    width, height, seed = settings["width"], settings["height"], settings["seed"]
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, i, width, height, styles, str(out / "images")) for i in range(count)]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results: Iterator[tuple[str, list[dict]]] = (
        pool.map(_make_one, jobs, chunksize=16) if pool else map(_make_one, jobs)
    )
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=count, desc=f"synth {split}", unit="img")
    images, annotations = [], []
    try:
        for image_id, (file_name, anns) in enumerate(results, start=1):
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    finally:
        if pool:
            pool.shutdown()
    coco = {
        "info": {
            "description": "lpr synthetic Korean plates",
            "split": split,
            "synthesize": settings,
            "faces": sorted(f.name for f in styles.faces),
            "schemes": list(styles.schemes),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": CATEGORY_ID[n], "name": n, "supercategory": "plate"} for n in PLATE_CLASSES],
    }
    path = out / f"{split}.json"
    path.write_text(json.dumps(coco, separators=(",", ":"), ensure_ascii=False))
    return path


def generate(
    out_dir: str | os.PathLike,
    *,
    train: int,
    val: int,
    heldout: int | None = None,
    seed: int = 0,
    width: int = 384,
    height: int = 288,
    fonts: str | None = None,
    backgrounds: str | None = None,
    hangul: dict[str, str] | None = None,
    workers: int = 1,
    progress: bool = False,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write a synthetic plate data set; returns the paths ``{"train", "val", "val_heldout", "images"}``.

    Args:
        out_dir: the data set folder: ``train.json``, ``val.json``, ``val_heldout.json`` and
            ``images/<split>/*.jpg``.
        train, val: images drawn in the training styles.
        heldout: images drawn only in the held-out styles (default: as many as ``val``; 0: none).
        seed: the same arguments always give byte-identical JSON and images.
        width, height: image size in pixels.
        fonts: a folder of ``.ttf``/``.otf`` files added to the training faces.
        backgrounds: a folder of photos to crop scenes from (default: procedural scenes).
        hangul: what the type slot draws for ``a``-``e`` as Hangul (default 가나다라마).
        workers: processes.
        overwrite: replace an existing set; with ``False`` an existing set is kept and the new copy
            dropped (the output is deterministic, so concurrent writers such as DDP ranks never
            delete a set another process is reading).

    Returns:
        The JSON paths by split and the image folder; a split of 0 images is not written.

    Raises:
        SynthError: on sizes out of range, or fonts, backgrounds or a Hangul map that cannot be used.
    """
    heldout = val if heldout is None else heldout
    if min(train, val, heldout) < 0 or train + val + heldout == 0:
        raise SynthError(f"image counts must be >= 0 and not all 0, got train={train}, val={val}, heldout={heldout}")
    if width < 64 or height < 64:
        raise SynthError(f"image size must be at least 64x64, got {width}x{height}")
    pools = {
        "train": Styles.for_split(False, fonts=fonts, backgrounds=backgrounds, hangul=hangul),
        "val_heldout": Styles.for_split(True, backgrounds=backgrounds, hangul=hangul),
    }
    pools["val"] = pools["train"]
    settings = {
        "seed": seed, "width": width, "height": height, "fonts": fonts, "backgrounds": backgrounds,
        "hangul": hangul, "heldout_faces": list(HELDOUT_FACES),
        "heldout_schemes": list(HELDOUT_SCHEMES),
    }  # fmt: skip
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_dir(out.parent, "data folder")
    make_dir(tmp, "data folder")
    counts = {"train": train, "val": val, "val_heldout": heldout}
    try:
        for split in SPLITS:
            if counts[split]:
                _write_split(tmp, split, counts[split], styles=pools[split], settings=settings, workers=workers,
                             progress=progress)  # fmt: skip
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the synthetic set to {out}: {e.strerror or e}") from None
    except BaseException:  # a failed or interrupted run leaves nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() and overwrite:
        shutil.rmtree(out)
    try:
        tmp.rename(out)
    except OSError:  # the set exists (overwrite=False, or another process was faster): keep it
        shutil.rmtree(tmp, ignore_errors=True)
    return {**{split: out / f"{split}.json" for split in SPLITS if counts[split]}, "images": out / "images"}
