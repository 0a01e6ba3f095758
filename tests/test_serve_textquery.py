"""Free-text requests -> attribute manipulations (vestis.serve.textquery)."""

import pytest

from vestis.catalog import AttributeSchema
from vestis.catalog.synthetic.garments import ATTRIBUTES
from vestis.serve.textquery import TextInterpreter, TextQueryError

FPI = AttributeSchema({
    "gender": ["Men", "Women", "Boys", "Girls", "Unisex"],
    "articleType": ["Tshirts", "Shirts", "Shorts", "Casual Shoes", "Sports Shoes", "Dresses", "Trousers"],
    "baseColour": ["Navy Blue", "Blue", "Black", "Grey", "Grey Melange", "Red"],
    "usage": ["Casual", "Formal", "Sports"],
    "season": ["Summer", "Fall", "Winter", "Spring"],
    "pattern": ["floral", "polka dot", "striped", "checked", "solid", "printed"],
})
fpi = TextInterpreter(FPI)
syn = TextInterpreter(AttributeSchema(ATTRIBUTES))


@pytest.mark.parametrize("text, want", [
    ("same but navy blue, for women", {"baseColour": "Navy Blue", "gender": "Women"}),
    ("Same, but NAVY BLUE for ladies", {"baseColour": "Navy Blue", "gender": "Women"}),
    ("a men's t-shirt in gray", {"gender": "Men", "articleType": "Tshirts", "baseColour": "Grey"}),
    ("male tees", {"gender": "Men", "articleType": "Tshirts"}),
    ("grey melange", {"baseColour": "Grey Melange"}),          # the longest phrase wins over "grey"
    ("casual shoes", {"articleType": "Casual Shoes"}),          # ... and over usage=Casual
    ("casual", {"usage": "Casual"}),
    ("plaid, for autumn", {"pattern": "checked", "season": "Fall"}),
    ("shirt", {"articleType": "Shirts"}),                       # singular of a plural value
])
def test_fashion_product_images_requests(text, want):
    u = fpi.parse(text)
    assert u.manipulations == want
    assert not u.unmatched


def test_how_each_word_was_read_is_reported():
    u = fpi.parse("nevy blue stripy dress")
    how = {m.value: (m.how, m.text) for m in u.matches}
    assert how["Navy Blue"] == ("fuzzy", "nevy blue") and how["striped"] == ("synonym", "stripy")
    assert how["Dresses"][0] == "exact"
    assert 0.8 < next(m.score for m in u.matches if m.how == "fuzzy") < 1


def test_unmatched_words_come_back():
    u = fpi.parse("navy blue with a zebra print for my grandmother")
    assert u.manipulations == {"baseColour": "Navy Blue", "pattern": "printed"}
    assert u.unmatched == ["zebra", "my", "grandmother"]


@pytest.mark.parametrize("text, want", [
    ("with short sleeves, in red", {"sleeve": "short", "colour": "red"}),
    ("v-neck polka dot dress", {"neckline": "v-neck", "pattern": "polka dots", "category": "dress"}),
    ("long sleeves slim fit jumper", {"sleeve": "long", "fit": "slim", "category": "sweater"}),
    ("knee length skirt", {"length": "knee", "category": "skirt"}),
    ("pants", {"category": "trousers"}),
])
def test_synthetic_requests(text, want):
    assert syn.parse(text).manipulations == want


def test_short_sleeves_is_not_shorts():
    """A value read from a word describing a garment part only counts if its attribute is about that part."""
    with pytest.raises(TextQueryError, match="short, sleeves"):
        fpi.parse("short sleeves")
    assert fpi.parse("shorts").manipulations == {"articleType": "Shorts"}


def test_ambiguous_words_are_reported_not_guessed():
    with pytest.raises(TextQueryError, match="horizontal stripes or pattern=vertical stripes"):
        syn.parse("striped")
    u = syn.parse("striped, red")
    assert u.manipulations == {"colour": "red"} and u.ambiguous[0]["text"] == "striped"


def test_text_that_maps_to_nothing_says_so():
    with pytest.raises(TextQueryError, match="could not map 'for women'.*words not understood: women.*attributes: category"):
        syn.parse("for women")  # the synthetic catalogue has no gender
    with pytest.raises(TextQueryError, match="could not map"):
        fpi.parse("something nice please")


def test_two_values_of_one_attribute_are_refused():
    with pytest.raises(TextQueryError, match="several values of gender"):
        fpi.parse("for men and women")


def test_overlong_text_is_refused():
    with pytest.raises(TextQueryError, match="at most 500"):
        fpi.parse("red " * 200)


@pytest.mark.parametrize("text", ["not red", "same but not in red", "without the stripes", "no Navy Blue please"])
def test_negations_are_refused_not_read_as_the_value(text):
    with pytest.raises(TextQueryError, match="negation is not supported") as e:
        fpi.parse(text)
    assert "name the value you want instead" in str(e.value)


def test_phrases_that_contain_a_negation_word_keep_their_meaning():
    assert syn.parse("no sleeves").manipulations == {"sleeve": "sleeveless"}
    assert fpi.parse("red, not sure about the rest").manipulations == {"baseColour": "Red"}


def test_unicode_words_are_not_split():
    fr = TextInterpreter(AttributeSchema({"couleur": ["crème", "bleu"], "genre": ["femme", "homme"]}))
    u = fr.parse("même chose mais en Crème, pour femme")
    assert u.manipulations == {"couleur": "crème", "genre": "femme"}
    assert "même" in u.unmatched and "m" not in u.unmatched
    assert fr.parse("cre\u0300me").manipulations == {"couleur": "crème"}  # a combining accent (NFD) reads the same
