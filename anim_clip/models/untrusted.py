"""Safe reading of any checkpoint file: ours, the release's, a backbone's weights.

A checkpoint is untrusted input (a pickle can run code), so every file is read with
``torch.load(weights_only=True)``. The only non-plain object allowed is the yacs ``CfgNode``
that the release's files carry as their config: it is read as an inert ``OrderedDict``. A file
needing anything else is refused with one line naming it.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from anim_clip.errors import AnimClipError


def load_untrusted(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; yacs configs become ``OrderedDict``."""
    path = Path(path)
    if not path.is_file():
        raise AnimClipError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([(OrderedDict, "yacs.config.CfgNode")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable: the command line names the file and the system's reason
    except Exception as e:  # torch raises many types for a damaged or hostile file
        raise load_refusal(path, e) from None


def load_refusal(path: str | Path, error: Exception) -> AnimClipError:
    """One line in our own words for a checkpoint ``torch.load(weights_only=True)`` would not read.

    torch's own message advises retrying with ``weights_only=False``, which would run whatever
    code the file holds; it is never passed on.
    """
    if Path(path).stat().st_size == 0:
        return AnimClipError(f"{path}: empty file (0 bytes), not a checkpoint; was its copy or save cut short?")
    text = str(error)
    if not isinstance(error, pickle.UnpicklingError):
        reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
        return AnimClipError(f"{path}: not a readable PyTorch checkpoint ({reason})")
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    if wanted is None:
        operand = re.search(r"Unsupported operand \d+", text)
        reason = operand.group(0).lower() if operand else "a pickle the safe loader cannot read"
        return AnimClipError(f"{path}: not a readable PyTorch checkpoint ({reason})")
    return AnimClipError(f"{path}: refused to load: unpickling it would call or build {wanted.group(1)}, not only "
                         "tensors and plain data; checkpoints are read with torch.load(weights_only=True) and "
                         "never unpickled unsafely")


def plain(obj: Any) -> Any:
    """Nested ``OrderedDict`` (e.g. a release yacs config) -> plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
