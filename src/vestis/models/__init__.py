"""Methods, one file each; every one a head on cached trunk feature maps (see base.py)."""

from vestis.models import attribute_baseline, global_embed, visual  # noqa: F401  (register)
from vestis.models import amnet  # noqa: F401  (register)
from vestis.models import fashionsearchnet  # noqa: F401  (register)
from vestis.models import agmlan  # noqa: F401  (register)
from vestis.models import parts  # noqa: F401  (register)
from vestis.models.base import (MODELS, Embedding, Probe, Request, SearchModel, Space, create_model, declared_levels,
                                embed_spaces_batched, run_batched)
from vestis.models.explanation import Explanation, Region
from vestis.models.loop import TrainData

__all__ = ["Embedding", "Explanation", "MODELS", "Probe", "Region", "Request", "SearchModel", "Space", "TrainData", "create_model", "declared_levels",
           "embed_spaces_batched", "run_batched"]
