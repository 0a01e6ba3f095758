"""Run directories: a trained model's weights (safetensors, never pickles), config and schema (JSON).

    <run>/run.json              RunInfo: id, model, config, channels, trunk, schema digest, history, and the
                                sha256 of every other file of the run (checked at load)
    <run>/schema.json           the attribute schema it was trained on
    <run>/weights.safetensors   the head's weights
    <run>/trunk.safetensors     a fine-tuned trunk, where `vestis train --finetune-trunk` made one
    <run>/s32_stages.safetensors  fine-tuned stride-32 stages, where `vestis train --finetune-s32` made them

Every file is written atomically; `load_run` refuses a run whose files changed since it was saved (a flipped
byte in the weights loads silently otherwise and changes every prediction).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vestis.catalog.schema import AttributeSchema
from vestis.errors import VestisError
from vestis.fsutil import atomic_path, atomic_write
from vestis.models.base import SearchModel, create_model
from vestis.models.config_check import check_run_info

RUN_FILE = "run.json"
SCHEMA_FILE = "schema.json"
WEIGHTS_FILE = "weights.safetensors"


class RunError(VestisError):
    pass


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
    files: dict = field(default_factory=dict)  # file name -> sha256, for every file of the run but run.json


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_run(model: SearchModel, run_dir: Path, trunk: Mapping, history: Mapping | None = None,
             catalog: str = "", extra_files: tuple[str, ...] = ()) -> RunInfo:
    """Weights, schema and run.json (last: the run exists once run.json does). `extra_files` (e.g. a fine-tuned
    trunk already written into the run) are fingerprinted too."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    model.schema.save(run_dir / SCHEMA_FILE)
    files = {f: _sha256(run_dir / f) for f in (WEIGHTS_FILE, SCHEMA_FILE, *extra_files)}
    info = RunInfo(run_id=f"{model.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}", model=model.name,
                   config=dict(model.config), channels=dict(model.channels), trunk=dict(trunk),
                   schema_digest=model.schema.digest(), history=dict(history or {}),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), catalog=catalog, files=files)
    atomic_write(run_dir / RUN_FILE, json.dumps(asdict(info), indent=1) + "\n")
    return info


def read_run_info(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    for f in (RUN_FILE, SCHEMA_FILE, WEIGHTS_FILE):
        if not (run_dir / f).is_file():
            raise RunError(f"{run_dir} is not a trained run: {f} is missing")
    try:
        raw = json.loads((run_dir / RUN_FILE).read_text())
        info = RunInfo(**raw)
    except (ValueError, TypeError) as e:
        raise RunError(f"{run_dir / RUN_FILE} is corrupt: {e}") from None
    for name, kind in (("history", dict), ("files", dict)):
        if not isinstance(getattr(info, name), kind):
            raise RunError(f"{run_dir / RUN_FILE} is corrupt: {name!r} must be a JSON object, "
                           f"got {type(getattr(info, name)).__name__}")
    check_run_info(info, run_dir / RUN_FILE)  # ids, config values, channels, trunk: clear errors, not tracebacks
    for f, digest in info.files.items():
        p = run_dir / f
        if not p.is_file():
            if info.trunk.get("in_run") and f == info.trunk.get("weights"):
                raise RunError(f"{run_dir} was trained with a fine-tuned trunk, but {p} is missing")
            if info.trunk.get("s32_stages_in_run") and f == info.trunk.get("s32_stages"):
                raise RunError(f"{run_dir} was trained with fine-tuned stride-32 stages, but {p} is missing")
            raise RunError(f"{run_dir} is incomplete: {f} is missing")
        if _sha256(p) != digest:
            raise RunError(f"{p} changed since the run was saved (sha256 mismatch): the file is corrupt or was "
                           f"replaced; retrain or restore the run")
    return info


def trunk_record_in(run_dir: Path, trunk: dict) -> dict:
    """A run's trunk record with the files it carries (a fine-tuned trunk, fine-tuned stride-32 stages) resolved
    inside `run_dir`, wherever the run now is."""
    run_dir, trunk = Path(run_dir), dict(trunk)
    for flag, field_, what in (("in_run", "weights", "a fine-tuned trunk"),
                               ("s32_stages_in_run", "s32_stages", "fine-tuned stride-32 stages")):
        if trunk.get(flag):
            path = run_dir / trunk[field_]
            if not path.is_file():
                raise RunError(f"{run_dir} was trained with {what}, but {path} is missing")
            trunk[field_] = str(path)
    return trunk


def load_run(run_dir: Path) -> tuple[SearchModel, RunInfo]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    info.trunk = trunk_record_in(run_dir, info.trunk)
    schema = AttributeSchema.load(run_dir / SCHEMA_FILE)
    if schema.digest() != info.schema_digest:
        raise RunError(f"{run_dir}: schema.json does not match the schema the run was trained on")
    model = create_model(info.model, schema, info.channels, info.config)
    try:
        model.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise RunError(f"{run_dir / WEIGHTS_FILE} does not load into model {info.model}: {e}") from None
    model.eval()
    return model, info
