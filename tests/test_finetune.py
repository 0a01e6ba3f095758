"""`vestis train --finetune-trunk`: the trunk's tail is fine-tuned, carried by the run, and used downstream."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from vestis.cli import main


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("ft")
    cache, cat = root / "cache", root / "cat"
    assert main(["synth", "-n", "48", "--seed", "2", "--out", str(cat), "--workers", "1"]) == 0
    run = train_tiny(root, cat, "attribute_baseline", {"epochs": 1, "attributes": ["category", "colour"]}, cache,
                     "--resolution", "64x64", "--finetune-trunk", "--finetune-epochs", "1", "--finetune-blocks", "1",
                     "--finetune-lr", "1e-3")
    return root, cat, run, cache


def test_only_the_unfrozen_tail_of_the_trunk_changes(tuned):
    from vestis.vision.trunk import TrunkSpec, build_trunk

    root, cat, run, cache = tuned
    info = json.loads((run / "run.json").read_text())
    assert info["trunk"]["in_run"] and info["trunk"]["weights"] == "trunk.safetensors"
    assert info["history"]["finetune_trunk"]["epochs"] == 1 and len(info["history"]["finetune_trunk"]["loss"]) == 1
    tuned_sd = load_file(str(run / "trunk.safetensors"))
    base_sd = build_trunk(TrunkSpec(resolution=(64, 64))).model.state_dict()
    assert set(tuned_sd) == set(base_sd)
    changed = {k for k in base_sd if base_sd[k].is_floating_point() and not torch.equal(base_sd[k], tuned_sd[k])}
    n_blocks = 1 + max(int(k.split(".")[1]) for k in base_sd if k.startswith("blocks."))
    last = f"blocks.{n_blocks - 1}."
    assert any(k.startswith(last) for k in changed) and any(k.startswith("conv_head") for k in changed)
    assert not any(k.startswith(("conv_stem", "blocks.0.", "blocks.1.")) for k in changed)
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)  # batch-norm statistics frozen
    default_key = TrunkSpec(resolution=(64, 64)).key
    assert info["trunk"]["key"] != default_key  # its features live under their own cache key


def test_a_moved_run_indexes_and_searches_with_its_own_trunk(tuned, tmp_path, capsys):
    from vestis.engine import Engine
    from vestis.runs import RunError, load_run

    root, cat, run, cache = tuned
    moved = tmp_path / "moved-run"
    shutil.copytree(run, moved)
    idx = tmp_path / "idx"
    assert main(["index", "--run", str(moved), "--catalog", str(cat), "--out", str(idx), "--cache", str(cache)]) == 0
    eng = Engine.load(moved, idx, cache_dir=cache)
    assert eng.spec.weights == moved / "trunk.safetensors"
    item = next(iter(eng.catalog))
    assert eng.search(item_id=item.id, k=3)
    (moved / "trunk.safetensors").unlink()
    with pytest.raises(RunError, match="fine-tuned trunk"):
        load_run(moved)
