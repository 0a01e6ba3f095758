import pytest

from vestis.catalog import UNSPECIFIED, AttributeSchema
from vestis.errors import UnknownAttributeError, UnknownValueError


def test_infer_orders_by_frequency_then_name():
    labels = [{"colour": "red"}, {"colour": "blue"}, {"colour": "red"}, {"colour": "amber", "fit": "slim"}]
    s = AttributeSchema.infer(labels)
    assert s.attributes == ["colour", "fit"]
    assert s.values("colour") == ("red", "amber", "blue")
    assert AttributeSchema.infer(labels, order="name").values("colour") == ("amber", "blue", "red")


def test_encode_uses_len_for_unspecified():
    s = AttributeSchema({"colour": ["red", "blue"], "fit": ["slim"]})
    assert s.encode({"colour": "blue"}) == [1, 1]
    assert s.index("fit", UNSPECIFIED) == 1
    assert s.index("colour", "red") == 0


def test_errors_list_valid_choices():
    s = AttributeSchema({"colour": ["red", "blue"]})
    with pytest.raises(UnknownAttributeError, match="valid attributes: colour"):
        s.values("color")
    with pytest.raises(UnknownValueError, match="valid values: red, blue") as e:
        s.check_value("colour", "navy")
    assert e.value.valid == ["red", "blue"]


def test_unspecified_is_not_a_value_and_duplicates_rejected():
    with pytest.raises(ValueError):
        AttributeSchema({"colour": ["red", UNSPECIFIED]})
    with pytest.raises(ValueError):
        AttributeSchema({"colour": ["red", "red"]})


def test_json_round_trip_and_digest(tmp_path):
    s = AttributeSchema({"b": ["x", "y"], "a": ["z"]})
    s.save(tmp_path / "s.json")
    t = AttributeSchema.load(tmp_path / "s.json")
    assert t == s and t.attributes == ["b", "a"]
    assert t.digest() == s.digest()
    assert AttributeSchema({"b": ["y", "x"], "a": ["z"]}).digest() != s.digest()  # order matters
