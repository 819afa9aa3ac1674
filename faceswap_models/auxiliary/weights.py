"""Weight loading for the auxiliary networks: the pipeline's one loader
(faceswap_common.weights: safetensors or torch.load(weights_only=True), `WeightsError` naming
the file) plus atomic safetensors saving for converted weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from faceswap_common.weights import WeightsError, load_into, read_state_dict

__all__ = ["WeightsError", "read_state_dict", "load_state_dict_file", "save_safetensors_atomic"]



def load_state_dict_file(module: nn.Module, path: str | os.PathLike, *,
                         ignore_prefixes: Iterable[str] = ()) -> nn.Module:
    """Strictly load ``path`` into ``module`` (faceswap_common.weights.load_into); returns ``module``."""
    return load_into(module, path, strict=True, ignore_prefixes=tuple(ignore_prefixes))


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` to ``path`` as safetensors via a temp file in the same folder + rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp,
                  metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
