"""Synthetic Korean licence plates in COCO format, randomised in what a camera varies.

Each image is a scene with 0-2 plates. A plate is drawn flat (one of many
typefaces, the type slot as Hangul or Latin, a Korean colour scheme, bolts,
dirt, shadow, glare), then turned in 3D and warped into the scene; the camera
adds blur, light, noise and JPEG. Every character, text region and board gets a
polygon carried through the same warp, so the annotation follows the pixels.

Usage::

    python -m lpr.data.synth --out data/synth --train 1200 --val 75 --seed 0
    python -m lpr.data.synth --preview 16 --out sheet.png

or from Python: ``generate("data/synth", train=1200, val=75, seed=0)``.
"""

from lpr.data.synth.cli import main
from lpr.data.synth.dataset import SPLITS, generate
from lpr.data.synth.fonts import SynthError
from lpr.data.synth.plate import CATEGORY_ID, PLATE_CLASSES
from lpr.data.synth.preview import contact_sheet
from lpr.data.synth.scene import HELDOUT_FACES, HELDOUT_SCHEMES, Styles, render_image

__all__ = [
    "CATEGORY_ID",
    "HELDOUT_FACES",
    "HELDOUT_SCHEMES",
    "PLATE_CLASSES",
    "SPLITS",
    "Styles",
    "SynthError",
    "contact_sheet",
    "generate",
    "main",
    "render_image",
]
