"""Methods, one file each; every one a head on cached trunk feature maps (see base.py)."""

from vestis.models import attribute_baseline, global_embed, visual  # noqa: F401  (register)
from vestis.models import amnet  # noqa: F401  (register)
from vestis.models import fashionsearchnet  # noqa: F401  (register)
from vestis.models.base import MODELS, RunInfo, SearchModel, create_model, load_run, save_run
from vestis.train import TrainData

__all__ = ["MODELS", "RunInfo", "SearchModel", "TrainData", "create_model", "load_run", "save_run"]
