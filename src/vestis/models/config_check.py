"""Checks of a run's recorded description (`run.json`) and of a model config, before anything is built from them:
a hand-edited or damaged file gets one clear error (a VestisError naming the field and what is valid) instead of a
traceback from deep inside torch ("negative dimension -1") or an AttributeError on a string.

The config rules are generic, read from each model's `default_config`: a value has its default's type (an int
where the default is an int, a finite number where it is a float, true/false where it is a bool, text where it is
text), sizes are at least 1, rates and other numbers are not negative, shares lie in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from vestis.errors import VestisError, echo

# integer settings that are sizes of something: 0 or less cannot be built
SIZES = frozenset({"hidden", "dim", "width", "reduce", "visual_dim", "batch_size", "global_batch", "roi", "p", "k",
                   "threads"})
# numbers that are shares or probabilities
SHARES = frozenset({"dropout", "mix_dropout", "threshold", "global_holdout", "global_hard", "lam"})


class ConfigError(VestisError):
    pass


def _kind(value) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "text", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check_config(model: str, defaults: Mapping, config: Mapping, where: str = "config") -> None:
    """Raise ConfigError unless every value of `config` fits its key's default (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: the config must be a JSON object of settings, got {_kind(config)}")
    for key, value in config.items():
        if key not in defaults:
            continue  # unknown keys are the model's own error, which lists the valid ones
        default = defaults[key]
        problem = None
        if default is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                problem = "must be true or false"
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                problem = "must be an integer"
            elif key in SIZES and value < 1:
                problem = "must be at least 1"
            elif value < 0:
                problem = "must not be negative"
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problem = "must be a finite number"
            elif (key in SHARES or key.startswith("p_")) and not 0 <= value <= (0.999 if key.endswith("dropout") else 1):
                problem = "must lie between 0 and 1" + (" (below 1)" if key.endswith("dropout") else "")
            elif key.endswith("lr") and value <= 0:
                problem = "must be above 0"
            elif value < 0:
                problem = "must not be negative"
        elif isinstance(default, str):
            if not isinstance(value, str):
                problem = "must be text"
        elif isinstance(default, list):
            if not isinstance(value, list) or (default and not all(isinstance(v, type(default[0])) for v in value)):
                problem = f"must be a list like {default}"
        if problem:
            raise ConfigError(f"{where}: model {model}: {key} {problem} (got {echo(value)}, {_kind(value)}; "
                              f"default {echo(default)})")


def check_run_info(info, path: Path) -> None:
    """Raise ConfigError unless a loaded RunInfo has the shapes `load_run` and the engine rely on."""
    def need(ok: bool, field: str, what: str, got) -> None:
        if not ok:
            raise ConfigError(f"{path} is corrupt: `{field}` must be {what}, got {echo(got)} ({_kind(got)})")

    for name in ("run_id", "model", "schema_digest"):
        need(isinstance(getattr(info, name), str), name, "text", getattr(info, name))
    need(isinstance(info.config, dict), "config", "an object of settings", info.config)
    need(isinstance(info.channels, dict) and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                 and v > 0 for k, v in info.channels.items()),
         "channels", 'an object of trunk levels and positive channel counts, e.g. {"s32": 1280}', info.channels)
    t = info.trunk
    need(isinstance(t, dict), "trunk", 'an object like {"name": ..., "resolution": [160, 128]}', t)
    need(isinstance(t.get("name"), str), "trunk.name", "the trunk's name (text)", t.get("name"))
    res = t.get("resolution")
    need(res is None or (isinstance(res, list) and len(res) == 2
                         and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in res)),
         "trunk.resolution", "[height, width] in pixels", res)
    need(t.get("weights") is None or isinstance(t.get("weights"), str), "trunk.weights", "a file name or null",
         t.get("weights"))
    need(t.get("s32_stages") is None or isinstance(t.get("s32_stages"), str), "trunk.s32_stages",
         "a file name or null", t.get("s32_stages"))

    import vestis.models  # noqa: F401  (registers the built-in methods)
    from vestis.models.base import MODELS

    cls = MODELS.get(info.model)
    if cls is not None:  # an unknown model is create_model's error, which lists the models
        check_config(info.model, cls.default_config, info.config, where=str(path))
