"""How a checkpoint's plates read under other character NMS thresholds and score weights, and why they fail.

    python scripts/char_scoring.py CKPT [--nms 0.5 0.3] [--weight 0 0.5 1] [--cover none 0.6]
        [--char-thr 0.5] [--grammar on off] [--zoom on off] [--data-root DIR]

For every combination, the checkpoint's reading heads
(:class:`lpr.models.char_reader.ReadingRoIHeads`) are set to that character NMS
IoU (``char_nms_thresh``), covered-box threshold (``char_cover_thresh``, ``none``
for none) and reader share of a character's score (``score_weight``; only a
checkpoint trained with ``score_weight > 0`` has a "not a character" output,
otherwise only 0 is run), the validation split of the checkpoint's own data set
(or of the one under ``--data-root``, e.g. another seed's synthetic set to choose
settings on images the reported figures do not use; a set without ``train.json``
takes its classes from ``val.json``) is predicted, and EIR and plate precision are computed
with the checkpoint's plate-reading settings (docs/metrics.md, EIR). Each failed ground-
truth plate is put in one bin by what was read at its board (the predicted board
of its type with the highest IoU > 0.5): no such board, a sub or main region
missing, too many or too few characters, or as many but a wrong one.
``--char-thr T`` asks what a lower score threshold for the characters alone
would read: their scores are multiplied by ``score_thr / T`` (at most 1), so
plate reading keeps those >= T. ``--grammar on off`` reads each setting twice: as
EIR and predict do (a region whose first-choice characters break its pattern reads
as the likeliest text that fits, from the detections' ``char_probs``) and from the
labels alone. ``--zoom on off`` reads with and without the second look at small
boards (:mod:`lpr.zoom`: the checkpoint's own settings, or the defaults of
:class:`lpr.zoom.BoardZoom` for a checkpoint trained without them). First it
prints, per split of the data set, the
largest IoU between two ground-truth characters of one image, and the largest
share of one's area another covers: how low the characters' NMS and cover
thresholds can go before they would merge true neighbours.
"""

from __future__ import annotations

import argparse
import collections
import itertools
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.ops import box_iou

from lpr.checkpoint import load
from lpr.data.validate import load_coco_json
from lpr.metrics.detection import ExactInferenceRate
from lpr.models.char_reader import covered_share
from lpr.plates import PlateReading, character_labels, is_character_class, read_boards
from lpr.zoom import with_zoom

READING_KEYS = ("score_thr", "char_nms_iou", "sub_pattern", "main_pattern")


def largest_character_overlap(coco: dict) -> tuple[float, float]:
    """The largest IoU between two ground-truth characters of one image of a COCO split, and the
    largest share of one character box's area that another covers."""
    chars = {c["id"] for c in coco["categories"] if is_character_class(c["name"])}
    boxes: dict[int, list[list[float]]] = collections.defaultdict(list)
    for a in coco["annotations"]:
        if a["category_id"] in chars:
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append([x, y, x + w, y + h])
    largest_iou = largest_cover = 0.0
    for b in map(torch.tensor, boxes.values()):
        iou = box_iou(b, b).fill_diagonal_(0)
        cover = covered_share(b).fill_diagonal_(0)
        largest_iou, largest_cover = max(largest_iou, iou.max().item()), max(largest_cover, cover.max().item())
    return largest_iou, largest_cover


def rescale_characters(output: dict, is_char: torch.Tensor, factor: float) -> dict:
    """``output`` with the character detections' scores multiplied by ``factor`` (at most 1)."""
    scores = output["scores"].clone()
    chars = is_char[output["labels"]]
    scores[chars] = (scores[chars] * factor).clamp(max=1.0)
    return {**output, "scores": scores}


def failure(gt: PlateReading, predicted: list[PlateReading]) -> str | None:
    """Why ``gt`` was not read (None: it was), from the readings of the image's predicted boards."""
    same_type = [p for p in predicted if p.type == gt.type]
    ious = box_iou(torch.tensor([gt.box]), torch.tensor([p.box for p in same_type]))[0] if same_type else []
    candidates = [(iou, p) for iou, p in zip(ious, same_type, strict=True) if iou > 0.5]
    if not candidates:
        return "no board"
    read = max(candidates, key=lambda c: c[0])[1]
    if read.valid and read.text == gt.text:
        return None
    if not read.sub or not read.main:
        return "region missing"
    if len(read.text) != len(gt.text):
        return "too many chars" if len(read.text) > len(gt.text) else "too few chars"
    return "wrong char"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--nms", type=float, nargs="+", default=[0.5, 0.3], help="character NMS IoUs")
    parser.add_argument("--weight", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="reader score shares")
    parser.add_argument(
        "--cover", type=lambda v: None if v == "none" else float(v), nargs="+", default=[None],
        help="character cover thresholds ('none': no cover suppression)",
    )  # fmt: skip
    parser.add_argument("--char-thr", type=float, nargs="+", default=None, help="characters' score thresholds")
    parser.add_argument(
        "--grammar", nargs="+", choices=("on", "off"), default=["on", "off"],
        help="on: a region whose first choices break its pattern reads as the likeliest text that fits "
        "(the detections' char_probs, as EIR and predict read); off: the labels alone",
    )  # fmt: skip
    parser.add_argument(
        "--zoom", nargs="+", choices=("on", "off"), default=["on"],
        help="on: small boards read again, enlarged (lpr.zoom); off: one pass",
    )  # fmt: skip
    parser.add_argument("--data-root", default=None, help="a COCO data set with the checkpoint's classes")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    loaded = load(args.ckpt)
    module, classes = loaded.module.eval(), loaded.classes
    heads = module.model.roi_heads
    if not hasattr(heads, "reader"):
        raise SystemExit(f"{args.ckpt} has no character reader (model.net.char_reader)")
    weights = args.weight if heads.reader.background else [0.0]
    plates_cfg = loaded.module.hparams.get("metrics", {}).get("plates", {})
    reading = {k: plates_cfg[k] for k in READING_KEYS if k in plates_cfg}
    score_thr = reading.get("score_thr", 0.5)
    is_char = torch.zeros(len(classes) + 1, dtype=torch.bool)  # by label
    is_char[character_labels(classes)] = True
    data_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(loaded.config["data"]), resolve=True))
    data_cfg.batch_size = args.batch
    if args.data_root:
        data_cfg.root, data_cfg.synthesize = args.data_root, None
        if not (Path(args.data_root) / data_cfg.val_json).is_file():
            raise SystemExit(f"--data-root {args.data_root}: no {data_cfg.val_json} there")
        if not (Path(args.data_root) / data_cfg.train_json).is_file():  # a validation-only set (train=0)
            data_cfg.train_json = data_cfg.val_json
    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("validate")
    batches = list(datamodule.split_dataloader("val"))
    overlaps = {
        name: largest_character_overlap(load_coco_json(path))
        for name, path in (("training", datamodule.train_json), ("validation", datamodule.val_json))
        if path.is_file()
    }

    print(f"checkpoint: {args.ckpt} (trained with char_nms_thresh {heads.char_nms_thresh}, "
          f"char_cover_thresh {heads.char_cover_thresh}, score_weight {heads.score_weight})\n"
          f"validation: {data_cfg.root}, {sum(len(b[0]) for b in batches)} images; "
          f"plate reading {reading}")  # fmt: skip
    print("two ground-truth characters of an image: largest IoU "
          + ", ".join(f"{name} {iou:.3f}" for name, (iou, _) in overlaps.items())
          + "; largest share of one covered by the other "
          + ", ".join(f"{name} {cover:.3f}" for name, (_, cover) in overlaps.items()) + "\n")  # fmt: skip
    kinds = ("no board", "region missing", "too many chars", "too few chars", "wrong char")
    zooms = {
        "on": with_zoom(module.model.zoom, classes, True),
        "off": None,
    }
    header = f"{'nms':>5} {'cover':>5} {'weight':>6} {'zoom':>4} {'chars':>5} {'grammar':>7} {'EIR':>6} {'read':>7} "
    header += f"{'precision':>9} "
    print(header + " ".join(f"{k:>14}" for k in kinds))
    for nms, cover, weight, zoom in itertools.product(args.nms, args.cover, weights, args.zoom):
        heads.char_nms_thresh, heads.char_cover_thresh, heads.score_weight = nms, cover, weight
        module.model.zoom = zooms[zoom]
        with torch.inference_mode():
            predicted = [(module(images), targets) for images, targets in batches]
        for char_thr, grammar in itertools.product(args.char_thr or [score_thr], args.grammar):
            eir = ExactInferenceRate(classes, **plates_cfg)
            failures: collections.Counter = collections.Counter()
            for outputs, targets in predicted:
                outputs = [rescale_characters(o, is_char, score_thr / char_thr) for o in outputs]
                if grammar == "off":
                    outputs = [{k: v for k, v in o.items() if k != "char_probs"} for o in outputs]
                eir.update(outputs, targets)
                for out, target in zip(outputs, targets, strict=True):
                    read = read_boards(
                        out["boxes"], out["labels"], out["scores"], classes, char_probs=out.get("char_probs"), **reading
                    )
                    for gt in read_boards(target["boxes"], target["labels"], None, classes, **reading):
                        failures[failure(gt, read)] += 1
            values = eir.compute()
            read_share = f"{values['counts']['matched']:3d}/{values['counts']['gt']:<3d}"
            print(
                f"{nms:5.2f} {'none' if cover is None else f'{cover:.2f}':>5} {weight:6.2f} {zoom:>4} {char_thr:5.2f} "
                f"{grammar:>7} "
                f"{values['EIR']:6.3f} {read_share} "
                f"{values['plate_precision']:9.3f} " + " ".join(f"{failures[k]:14d}" for k in kinds),
                flush=True,
            )


if __name__ == "__main__":
    main()
