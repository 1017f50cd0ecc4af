"""The import graph of lpr runs one way: no module imports a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

LPR = Path(__file__).resolve().parents[1] / "lpr"
# lowest first; a module may import its own layer and those below it
LAYERS = [
    {
        "lpr.plates",
        "lpr.classes",
        "lpr.outputs",
        "lpr.hardware",
        "lpr.draw",
        "lpr.metrics",
        "lpr.data.validate",
        "lpr.instantiation",
    },
    {"lpr.data", "lpr.results", "lpr.onnx_reader", "lpr.tracks", "lpr.zoom"},
    {"lpr.stream"},
    {"lpr.models"},
    {"lpr.callbacks", "lpr.checkpoint"},
    {"lpr.config_check", "lpr.reader", "lpr.scoring", "lpr.sweep"},
    {"lpr.train", "lpr.predict", "lpr.evaluate", "lpr.export", "lpr.serve"},
]


def layer_of(module: str) -> int | None:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            within = module == prefix or module.startswith(prefix + ".")
            if within and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {n for n in names if n.startswith("lpr.")}


def test_no_module_imports_a_layer_above_its_own():
    upward, unplaced = [], []
    for path in sorted(LPR.rglob("*.py")):
        module = ".".join(path.relative_to(LPR.parent).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        if own is None:
            if module != "lpr":
                unplaced.append(module)
            continue
        for name in imported(path):
            other = layer_of(name)
            if other is not None and other > own:
                upward.append(f"{module} (layer {own}) imports {name} (layer {other})")
    assert not unplaced, f"modules in no layer of this test: {unplaced}"
    assert not upward, "\n".join(upward)
