"""The one small protocol every method implements, the model registry, and run directories.

Every method is a head on cached trunk feature maps (`maps`: {"s16": (N,C,H,W), "s32": ...}), so the
engine, evaluation and serving never special-case a method:
  fit(data, config)                 train (and set prototypes / memory where the method has them)
  embed(maps) -> (N, D)             gallery vectors, stored in the index
  embed_query(maps, manipulations)  query vectors with the manipulations applied
  attribute_embed(maps, attribute)  attribute-specific vectors, where the method has them
  predict_attributes(maps)          per-attribute probabilities, where the method has attribute classifiers
  explain(maps)                     activation maps for the web page, where the method has them
`attribute_probabilities`, `predicts_attributes` and `explains` let callers (the HTTP API) ask what a model can
do without knowing which method it is.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vestis.catalog.schema import AttributeSchema
from vestis.errors import VestisError
from vestis.train import TrainData

Maps = Mapping[str, torch.Tensor]
Manipulation = Mapping[str, str]


class RunError(VestisError):
    pass


class SearchModel(nn.Module):
    name: str = ""
    metric: str = "ip"  # how the index compares vectors: "ip" (inner product) or "l2"
    supports_manipulation: bool = False
    default_config: dict = {}

    def __init__(self, schema: AttributeSchema, channels: Mapping[str, int], config: Mapping | None = None):
        super().__init__()
        self.schema = schema
        self.channels = dict(channels)
        unknown = set(config or {}) - set(self.default_config)
        if unknown:
            raise VestisError(f"model {self.name}: unknown config key(s) {sorted(unknown)}; "
                              f"valid: {sorted(self.default_config)}")
        self.config = {**self.default_config, **(config or {})}

    # --- protocol -----------------------------------------------------------------------------
    def fit(self, data: TrainData, progress: bool = True) -> dict:
        """Train on `data`; return a small history dict (losses, seconds)."""
        return {}

    def embed(self, maps: Maps) -> torch.Tensor:
        raise NotImplementedError

    def embed_query(self, maps: Maps, manipulations: Sequence[Manipulation] | None = None) -> torch.Tensor:
        """Query vectors; models that cannot manipulate ignore `manipulations` (see supports_manipulation)."""
        return self.embed(maps)

    def attribute_query(self, maps: Maps, attribute: str) -> torch.Tensor:
        """Query vector for "similar with respect to `attribute`" against the gallery vectors. Without an
        attribute-specific model this is the plain embedding (the engine restricts candidates to items
        with a known value of the attribute)."""
        return self.embed(maps)

    def attribute_embed(self, maps: Maps, attribute: str) -> torch.Tensor:
        raise VestisError(f"model {self.name} has no attribute-specific embedding")

    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        """Per attribute of the schema (in order), (N, values + 1) probabilities; the last column is
        "unspecified". Only models with attribute classifiers have it."""
        raise VestisError(f"model {self.name} does not predict attributes")

    def attribute_probabilities(self, maps: Maps) -> dict[str, torch.Tensor]:
        """{attribute: (N, values + 1) probabilities} for the attributes this model predicts (all of the
        schema's for `predict_attributes`; a model that classifies only some attributes overrides this)."""
        return dict(zip(self.schema.attributes, self.predict_attributes(maps)))

    @property
    def predicts_attributes(self) -> bool:
        cls = type(self)
        return (cls.predict_attributes is not SearchModel.predict_attributes
                or cls.attribute_probabilities is not SearchModel.attribute_probabilities)

    def explain(self, maps: Maps) -> dict:
        """Activation maps, where the model has them: {"method", "attributes", "values" (N x A predicted values),
        "confidence" (N, A), "aam" (N, A, H, W), "stride" (input pixels per cell), "boxes" (N, A, 4) in cells}."""
        raise VestisError(f"model {self.name} has no explanation maps")

    @property
    def explains(self) -> bool:
        return type(self).explain is not SearchModel.explain

    # --- helpers for subclasses ---------------------------------------------------------------
    def check_manipulations(self, manipulations: Sequence[Manipulation] | None, n: int) -> list[dict]:
        """Validate against the schema (clear errors listing valid choices); one dict per query."""
        if manipulations is None:
            return [{} for _ in range(n)]
        if isinstance(manipulations, Mapping):
            manipulations = [manipulations] * n
        if len(manipulations) != n:
            raise VestisError(f"{len(manipulations)} manipulation sets for {n} queries")
        out = []
        for m in manipulations:
            for a, v in m.items():
                self.schema.check_value(a, v)
            out.append(dict(m))
        return out


# --- registry -------------------------------------------------------------------------------------
MODELS: dict[str, type[SearchModel]] = {}


def register(cls: type[SearchModel]) -> type[SearchModel]:
    MODELS[cls.name] = cls
    return cls


def create_model(name: str, schema: AttributeSchema, channels: Mapping[str, int], config: Mapping | None = None) -> SearchModel:
    import vestis.models  # noqa: F401  (registers the built-in methods)

    if name not in MODELS:
        raise VestisError(f"unknown model {name!r}; models: {', '.join(sorted(MODELS))}")
    return MODELS[name](schema, channels, config)


# --- run directories ------------------------------------------------------------------------------
@dataclass
class RunInfo:
    run_id: str
    model: str
    config: dict
    channels: dict
    trunk: dict
    schema_digest: str
    history: dict = field(default_factory=dict)
    created: str = ""
    catalog: str = ""


def save_run(model: SearchModel, run_dir: Path, trunk: Mapping, history: Mapping | None = None,
             catalog: str = "") -> RunInfo:
    """Weights as safetensors (never pickles), config + schema as JSON; written atomically per file."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo(run_id=f"{model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", model=model.name,
                   config=dict(model.config), channels=dict(model.channels), trunk=dict(trunk),
                   schema_digest=model.schema.digest(), history=dict(history or {}),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), catalog=catalog)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = run_dir / "weights.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(run_dir / "weights.safetensors")
    model.schema.save(run_dir / "schema.json")
    (run_dir / "run.json.tmp").write_text(json.dumps(info.__dict__, indent=1) + "\n")
    (run_dir / "run.json.tmp").replace(run_dir / "run.json")
    return info


def load_run(run_dir: Path) -> tuple[SearchModel, RunInfo]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    for f in ("run.json", "schema.json", "weights.safetensors"):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir} is not a trained run: {f} is missing")
    try:
        info = RunInfo(**json.loads((run_dir / "run.json").read_text()))
    except (ValueError, TypeError) as e:
        raise RunError(f"{run_dir / 'run.json'} is corrupt: {e}") from None
    from vestis.models.config_check import check_run_info
    check_run_info(info, run_dir / "run.json")
    if info.trunk.get("in_run"):  # a fine-tuned trunk saved inside the run: resolve it wherever the run now is
        weights = run_dir / info.trunk["weights"]
        if not weights.is_file():
            raise RunError(f"{run_dir} was trained with a fine-tuned trunk, but {weights} is missing")
        info.trunk = {**info.trunk, "weights": str(weights)}
    schema = AttributeSchema.load(run_dir / "schema.json")
    if schema.digest() != info.schema_digest:
        raise RunError(f"{run_dir}: schema.json does not match the schema the run was trained on")
    model = create_model(info.model, schema, info.channels, info.config)
    try:
        state = load_file(str(run_dir / "weights.safetensors"))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise RunError(f"{run_dir / 'weights.safetensors'} does not load into model {info.model}: {e}") from None
    model.eval()
    return model, info
