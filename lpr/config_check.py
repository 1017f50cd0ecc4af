"""Checks of a composed configuration before anything is built, and the clear-error exit of the CLIs."""

from __future__ import annotations

import atexit
import functools
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from lpr.data.validate import is_int, is_number
from lpr.instantiation import target_error
from lpr.results import check_roi


def logged_keys(cfg: DictConfig) -> list[str]:
    """Every key the objects of a training config log, as each class declares it next to its logging
    (a ``LOGGED_KEYS`` attribute of the module's and the callbacks' classes): what checkpoint.monitor
    may name. A class that cannot be imported declares nothing (instantiating it will say why)."""
    targets = [OmegaConf.select(cfg, "model._target_", default=None)]
    callbacks = OmegaConf.select(cfg, "callbacks", default=None) or {}
    targets += [c.get("_target_") for c in callbacks.values() if isinstance(c, DictConfig)]
    keys: list[str] = []
    for target in filter(None, targets):
        try:
            declared = getattr(get_class(target), "LOGGED_KEYS", ())
        except (ImportError, ValueError):
            continue
        keys += [k for k in declared if k not in keys]
    return keys


def run_dir(default: str) -> str:
    """``paths.output_dir``: ``default``, except in a Hydra multirun, where each job has its own folder."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().runtime.output_dir
    return default


OmegaConf.register_new_resolver("lpr.run_dir", run_dir, replace=True)  # ${lpr.run_dir:DEFAULT}, conf/paths


class RunFolderCheck(HydraCallback):
    """Training's run folder (``hydra.run.dir``), checked, made and claimed before Hydra opens its log
    there: a folder holding another run (:func:`check_output_dir`) or claimed by a run starting there
    (:func:`claim_run_folder`: two runs launched in the same second share the default folder's
    name), a path that is a file or one that cannot be created get one line and exit code 2 instead
    of a touched run or Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        try:
            check_output_dir(path, resuming=OmegaConf.select(config, "ckpt_path") not in (None, ""))
        except RunFolderInUse as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        if path.exists() and not path.is_dir():
            why = "exists and is not a folder"
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                why = f"cannot be created: {e.strerror or e}"
            else:
                try:
                    claim_run_folder(path)
                except RunFolderInUse as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.exit(2)
                return
        print(f"error: the run folder {path} (paths.output_dir) {why}", file=sys.stderr)
        sys.exit(2)


RUN_CLAIM = ".lpr-run"  # in a run folder while a process trains there: "PID HOST"


def claim_run_folder(path: Path) -> None:
    """Claim the run folder ``path`` for this process until it exits (:data:`RUN_CLAIM`, created
    atomically), so that a second run started there before the first has written anything is
    refused rather than training into the same files. A claim left by a process that no longer runs
    on this host is taken over. Only rank 0 claims: the other ranks of a multi-process run join it.

    Raises:
        RunFolderInUse: another live process (or one on another host) holds the claim.
    """
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    claim, mine = path / RUN_CLAIM, f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text = _read(claim)
            if text == mine:
                return  # claimed already (the CLI's run folder check, then training itself)
            holder = _claim_holder(text)
            if holder:
                raise RunFolderInUse(
                    f"paths.output_dir={path} is in use by another run ({holder}), started there before this "
                    f"one: train into another folder (set paths.output_dir); nothing was changed there (if no run is "
                    f"starting or training there, delete {claim})"
                ) from None
            claim.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        atexit.register(_release_claim, claim, mine)
        return


def _claim_holder(text: str | None) -> str | None:
    """Who holds a claim that reads ``text``, or ``None`` when its process no longer runs on this host."""
    try:
        pid, host = (text or "").split()
        pid = int(pid)
    except ValueError:
        return "a process still writing its claim"
    if host != socket.gethostname():
        return f"process {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"process {pid}"


def _read(claim: Path) -> str | None:
    try:
        return claim.read_text()
    except OSError:
        return None


def _release_claim(claim: Path, mine: str) -> None:
    if _read(claim) == mine:
        claim.unlink(missing_ok=True)


class ConfigError(ValueError):
    """A configuration value outside what lpr accepts."""


def instantiate_checked(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, with a constructor's refusal of its values as a :class:`ConfigError`.

    A ``ValueError`` or ``TypeError`` under Hydra's wrapping (a value out of range, a key the
    target does not take) is a bad configuration: it comes back as one message naming the
    config key; anything else propagates as it was.
    """
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        cause = target_error(e)
        if not isinstance(cause, ValueError | TypeError):
            raise
        key = re.search(r"full_key: (\S+)", str(e))
        raise ConfigError(f"{key.group(1) + ': ' if key else ''}{cause}") from e


_MODEL_COUNTS = (
    "transform.min_size",
    "transform.max_size",
    "rpn.batch_size_per_image",
    "roi_heads.batch_size_per_image",
    "roi_heads.detections_per_img",
)
_MODEL_FRACTIONS = tuple(
    f"roi_heads.{k}"
    for k in ("fg_iou_thresh", "bg_iou_thresh", "positive_fraction", "score_thresh", "char_nms_thresh",
              "char_cover_thresh", "score_weight")
)  # fmt: skip

# (key, predicate, what is allowed); a key absent from the config is not checked.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.optimizer.lr", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("model.optimizer.weight_decay", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    ("data.batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("data.num_workers", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ("data.check_images", lambda v: v in ("full", "header", "none"), "'full', 'header' or 'none'"),
    ("data.max_image_pixels", lambda v: is_int(v) and v >= 1, "an integer >= 1, or null"),
    ("data.allow_outside_root", lambda v: isinstance(v, bool), "true or false"),
    ("trainer.max_epochs", lambda v: is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1"),
    ("trainer.max_steps", lambda v: is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1"),
    ("model.metrics.dv.k", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("model.metrics.dv.min_points", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("model.metrics.plates.score_thr", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("model.metrics.plates.char_nms_iou", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("model.net.rpn.anchor_scale", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("model.net.zoom.max_width", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("model.net.zoom.target_width", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("model.net.zoom.max_scale", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("model.net.zoom.min_score", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("model.net.train_zoom", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("model.net.char_reader.letter_weight", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    *((f"model.net.{k}", lambda v: is_int(v) and v >= 1, "an integer >= 1") for k in _MODEL_COUNTS),
    *((f"model.net.{k}", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]") for k in _MODEL_FRACTIONS),
    ("torch_threads", lambda v: is_int(v) and v >= 1, "an integer >= 1, or null"),
]


def _is_roi(v: Any) -> bool:
    try:
        check_roi(list(v) if isinstance(v, ListConfig) else v)
    except ValueError:
        return False
    return True


# lpr.predict's options; a key absent or null is not checked.
PREDICT_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("score_thr", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1], or null"),
    ("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("draw", lambda v: isinstance(v, bool), "true or false"),
    ("every_n_frames", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("max_frames", lambda v: is_int(v) and v >= 1, "an integer >= 1, or null"),
    ("max_side", lambda v: is_int(v) and v >= 32, "an integer >= 32"),
    ("roi", _is_roi, "[x, y, width, height] in pixels: integers, x and y >= 0, width and height >= 32; or null"),
    ("zoom", lambda v: isinstance(v, bool), "true or false, or null"),
    ("track.iou_thresh", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("track.max_gap", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    ("track.min_readings", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
]


# lpr.serve's options; a key absent or null is not checked.
SERVE_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    *(rule for rule in PREDICT_RULES if rule[0] in ("score_thr", "max_side", "roi", "zoom")),
    ("port", lambda v: is_int(v) and 0 <= v <= 65535, "an integer in [0, 65535]"),
    ("batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    ("batch_wait_ms", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    ("max_upload_mb", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("max_pixels", lambda v: is_int(v) and v >= 1024, "an integer >= 1024"),
    ("timeout_s", lambda v: is_number(v) and v > 0, "a number > 0"),
]


# lpr.evaluate's options checked here (its others are checked where they are read).
EVAL_RULES = [rule for rule in PREDICT_RULES if rule[0] == "zoom"]


def validate_options(cfg: DictConfig, rules: list[tuple[str, Callable[[Any], bool], str]]) -> None:
    """Raise one :class:`ConfigError` listing every option of a command that breaks its ``rules``
    (:data:`PREDICT_RULES`, :data:`SERVE_RULES`, :data:`EVAL_RULES`): key, value, what is allowed."""
    problems = []
    for key, ok, allowed in rules:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            problems.append(f"{key}={shown!r}: must be {allowed}")
    if problems:
        raise ConfigError("invalid options:\n  - " + "\n  - ".join(problems))


def _regex_ok(pattern: Any) -> bool:
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return True


class RunFolderInUse(ConfigError):
    """``paths.output_dir`` holds another run, which this one must not touch."""


def check_output_dir(output_dir: Path, *, resuming: bool) -> None:
    """A new run never writes into a finished or running one: ``output_dir`` may hold another run's
    files (``config.yaml``, checkpoints) only when this run resumes it. Only rank 0 asks: the other
    ranks of a multi-process run (Lightning's DDP launcher, torchrun, SLURM) join the folder their
    rank 0 has started, often after it wrote ``config.yaml`` there.

    Raises:
        RunFolderInUse: ``output_dir`` holds another run and no ``ckpt_path`` was given.
    """
    from lightning.pytorch.utilities import rank_zero_only

    if resuming or rank_zero_only.rank != 0:
        return
    found = [p for p in (output_dir / "config.yaml", output_dir / "checkpoints") if p.exists()]
    if found:
        raise RunFolderInUse(
            f"paths.output_dir={output_dir} already holds a run ({', '.join(p.name for p in found)}): resume it "
            "with ckpt_path=last, or train into another folder; nothing was changed there"
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Raise one :class:`ConfigError` listing every bad value (key, value, what is allowed).

    Raises:
        ConfigError: a bad value, inconsistent memory thresholds, or a ``checkpoint.monitor``
            key that nothing logs.
    """
    problems = []
    for key, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not ok(value):
            problems.append(f"{key}={value!r}: must be {allowed}")
    for key in ("model.metrics.plates.sub_pattern", "model.metrics.plates.main_pattern"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not _regex_ok(value):
            problems.append(f"{key}={value!r}: must be a valid regular expression")
    memory = OmegaConf.select(cfg, "callbacks.memory", default=None)
    if memory:
        w, s, t = (memory.get(k) for k in ("warn_percent", "skip_percent", "stop_percent"))
        if not all(is_number(v) for v in (w, s, t)) or not 0 < w <= s < t <= 100:
            problems.append(
                f"callbacks.memory warn_percent={w}, skip_percent={s}, stop_percent={t}: "
                "need 0 < warn_percent <= skip_percent < stop_percent <= 100"
            )
    if OmegaConf.select(cfg, "model.net.train_zoom", default=0) and OmegaConf.select(cfg, "model.net.zoom") is None:
        problems.append("model.net.train_zoom trains on the second look's windows: it needs model.net.zoom")
    monitor = OmegaConf.select(cfg, "checkpoint.monitor", default=None)
    keys = [monitor] if isinstance(monitor, str) else list(monitor or [])
    logged = logged_keys(cfg) if keys else []
    for key in keys:
        if key not in logged:
            problems.append(f"checkpoint.monitor={key!r}: nothing logs this key; logged keys: {', '.join(logged)}")
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def clear_errors(*error_types: type[BaseException]) -> Callable:
    """Decorate a Hydra task: the given errors print one message and exit with code 2.

    Tracebacks come back with ``HYDRA_FULL_ERROR=1`` or ``LPR_DEBUG=1``.
    """

    def wrap(task: Callable) -> Callable:
        @functools.wraps(task)
        def run(cfg: DictConfig | ListConfig, *args: Any, **kwargs: Any) -> Any:
            try:
                return task(cfg, *args, **kwargs)
            except error_types as e:
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("LPR_DEBUG") == "1":
                    raise
                print(f"error: {e}", file=sys.stderr)
                print("(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
                sys.exit(2)

        return run

    return wrap


def model_alias(argv: list[str]) -> list[str]:
    """``model=PATH`` as ``ckpt_path=PATH``: on the command line Hydra would take ``model=`` for the
    training configs' model group."""
    return [f"ckpt_path={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]
