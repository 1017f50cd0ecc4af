"""``python -m lpr.data.synth``: write a synthetic data set, or a contact sheet of it (``--preview N``)."""

from __future__ import annotations

import argparse
import sys

from lpr.data.synth.dataset import generate
from lpr.data.synth.fonts import DEFAULT_HANGUL, SynthError
from lpr.data.synth.preview import contact_sheet
from lpr.data.synth.scene import Styles
from lpr.outputs import OutputError


def _hangul(value: str) -> dict[str, str]:
    if len(value) != len(DEFAULT_HANGUL):
        raise argparse.ArgumentTypeError(f"give 5 characters, one for each of a-e (e.g. 가나다라마), got {value!r}")
    return dict(zip(DEFAULT_HANGUL, value, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lpr.data.synth", description=__doc__.split(":")[1].strip())
    parser.add_argument("--out", required=True, help="output folder (or the PNG file with --preview)")
    parser.add_argument("--train", type=int, default=1200, help="training images")
    parser.add_argument("--val", type=int, default=75, help="validation images (training styles)")
    parser.add_argument("--heldout", type=int, default=None, help="held-out-style validation images (default: --val)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--fonts", default=None, help="folder of .ttf/.otf files added to the training faces")
    parser.add_argument("--backgrounds", default=None, help="folder of photos to crop scenes from")
    parser.add_argument("--hangul", type=_hangul, default=None, help="the type slot's Hangul for a-e (가나다라마)")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument(
        "--preview", type=int, metavar="N", default=None, help="write a contact sheet of N images to --out (.png)"
    )
    parser.add_argument("--preview-heldout", action="store_true", help="the contact sheet in the held-out styles")
    args = parser.parse_args(argv)
    try:
        if args.preview is not None:
            styles = Styles.for_split(args.preview_heldout, fonts=args.fonts, backgrounds=args.backgrounds,
                                      hangul=args.hangul)  # fmt: skip
            path = contact_sheet(args.out, args.preview, seed=args.seed, width=args.width, height=args.height,
                                 styles=styles)  # fmt: skip
            print(f"wrote {path} ({args.preview} images)")
            return
        paths = generate(
            args.out,
            train=args.train,
            val=args.val,
            heldout=args.heldout,
            seed=args.seed,
            width=args.width,
            height=args.height,
            fonts=args.fonts,
            backgrounds=args.backgrounds,
            hangul=args.hangul,
            workers=args.workers,
            progress=True,
        )
    except (SynthError, OutputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print("wrote " + ", ".join(f"{paths[s]}" for s in paths if s != "images"))
