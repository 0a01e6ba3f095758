"""Free-text requests -> attribute manipulations: "same but navy blue, for women" -> {baseColour: Navy Blue,
gender: Women} on whatever schema the loaded run has.

How a request is read (no model, no network; deterministic):
1. The text is lower-cased and split into Unicode words ("men's" -> "mens", "t-shirt" -> "t", "shirt",
   "même" stays "même").
2. Every value of every attribute is known under a few spellings: its name ("navy blue"), the name without
   spaces ("navyblue", so "tshirts" and "t-shirts" meet), and singular forms ("tshirt"); the synonym table
   below adds everyday words ("ladies" -> Women, "gray" -> grey, "pants" -> trousers) for values the schema
   actually has.
3. Reading left to right, the longest phrase (up to four words) that names a value wins; failing that, a
   close misspelling of one or two words (difflib ratio >= `FUZZY_CUTOFF`, words of four letters or more).
4. A phrase that names values of several attributes ("short": sleeve or length) is settled by an attribute
   name next to it ("short sleeves"); otherwise it is reported as ambiguous, never guessed.
5. Filler words ("same", "but", "in", "for", ...) and attribute names are context; every other word that named
   nothing comes back in `unmatched`, so the caller can show what was not understood.
A request that names no value at all raises `TextQueryError`, and so does one that asks for two values of one
attribute ("for men and women"), and one that negates a value ("not red", "without stripes"): a manipulation
sets a value, so a negation is refused with what to ask instead rather than read as the value it negates.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from vestis.catalog.schema import AttributeSchema
from vestis.errors import VestisError, echo

MAX_NGRAM = 4
FUZZY_CUTOFF = 0.84
MAX_TEXT = 500  # characters

# everyday word or phrase -> value names it may mean (case-insensitive; used only where the schema has them)
SYNONYMS: dict[str, tuple[str, ...]] = {
    # gender
    "man": ("men",), "men": ("men",), "mens": ("men",), "male": ("men",), "males": ("men",), "gents": ("men",),
    "gent": ("men",), "gentlemen": ("men",), "him": ("men",),
    "woman": ("women",), "women": ("women",), "womens": ("women",), "female": ("women",), "females": ("women",),
    "lady": ("women",), "ladies": ("women",), "her": ("women",),
    "boy": ("boys",), "kids boy": ("boys",), "girl": ("girls",), "kids girl": ("girls",),
    "unisex": ("unisex",), "gender neutral": ("unisex",),
    # colours
    "navy": ("navy blue",), "dark blue": ("navy blue",), "gray": ("grey",), "grey": ("grey",),
    "burgundy": ("burgundy", "maroon"), "wine": ("maroon", "burgundy"), "khaki": ("khaki", "beige"),
    "tan": ("tan", "beige"), "camel": ("beige",), "ivory": ("off white", "cream"), "cream": ("cream", "off white"),
    "golden": ("gold",), "silvery": ("silver",), "violet": ("purple",), "lilac": ("lavender", "purple"),
    "multicolour": ("multi",), "multicolor": ("multi",), "multicoloured": ("multi",), "multicolored": ("multi",),
    "colourful": ("multi",), "colorful": ("multi",), "light green": ("lime green",),
    # categories
    "tee": ("t-shirt", "tshirts"), "tees": ("t-shirt", "tshirts"), "tshirt": ("t-shirt", "tshirts"),
    "t shirt": ("t-shirt", "tshirts"), "top": ("tops",),
    "pants": ("trousers",), "pant": ("trousers",), "slacks": ("trousers",), "chinos": ("trousers",),
    "jumper": ("sweater", "sweaters"), "pullover": ("sweater", "sweaters"), "knit": ("sweater", "sweaters"),
    "hoody": ("hoodie",), "hooded": ("hoodie", "hood"), "frock": ("dress", "dresses"), "gown": ("dress", "dresses"),
    "vest": ("tank top", "innerwear vests"), "singlet": ("tank top",), "coat": ("jacket", "jackets"),
    "blazer": ("jacket", "blazers"), "sneakers": ("casual shoes", "sports shoes"), "trainers": ("sports shoes",),
    "running shoes": ("sports shoes",), "heels": ("heels",), "slippers": ("flip flops",), "purse": ("handbags", "wallets"),
    "bag": ("handbags",), "shades": ("sunglasses",), "watch": ("watches",),
    # sleeves, necklines, lengths, fits (the synthetic catalogue's vocabulary)
    "no sleeves": ("sleeveless",), "sleeveless": ("sleeveless",), "short sleeved": ("short",),
    "long sleeved": ("long",), "half sleeves": ("elbow", "short"), "elbow length": ("elbow",),
    "vneck": ("v-neck",), "v neck": ("v-neck",), "round neck": ("crew",), "crew neck": ("crew",),
    "crewneck": ("crew",), "polo neck": ("turtleneck",), "roll neck": ("turtleneck",), "collared": ("collar",),
    "knee length": ("knee",), "knee-length": ("knee",), "ankle length": ("maxi",), "floor length": ("maxi",),
    "tight": ("slim",), "fitted": ("slim",), "skinny": ("slim",), "baggy": ("loose",), "oversized": ("loose",),
    "relaxed": ("loose",), "relaxed fit": ("loose",),
    # patterns
    "plain": ("solid",), "stripes": ("striped", "horizontal stripes", "vertical stripes"),
    "stripe": ("striped", "horizontal stripes", "vertical stripes"), "stripy": ("striped",),
    "striped": ("striped", "horizontal stripes", "vertical stripes"),
    "horizontal": ("horizontal stripes",), "vertical": ("vertical stripes",), "breton": ("horizontal stripes",),
    "pinstripe": ("vertical stripes", "striped"), "pinstriped": ("vertical stripes", "striped"),
    "checks": ("checked", "check"), "checked": ("checked", "check"), "checkered": ("checked", "check"),
    "plaid": ("checked", "check"), "tartan": ("checked", "check"), "gingham": ("checked", "check"),
    "polka": ("polka dot", "polka dots"), "dots": ("polka dot", "polka dots"), "dotted": ("polka dot", "polka dots"),
    "spotted": ("polka dot", "polka dots"), "flowers": ("floral",), "flowery": ("floral",), "flower": ("floral",),
    "print": ("printed",), "prints": ("printed",),
    # usage, season
    "sporty": ("sports",), "sport": ("sports",), "athletic": ("sports",), "gym": ("sports",), "office": ("formal",),
    "work": ("formal",), "business": ("formal",), "everyday": ("casual",), "partywear": ("party",),
    "traditional": ("ethnic",), "autumn": ("fall",), "summery": ("summer",), "wintry": ("winter",),
}

# words naming an attribute (context that settles ambiguity), beyond the attribute's own name
ATTRIBUTE_WORDS: dict[str, tuple[str, ...]] = {
    "colour": ("colour", "color", "colours", "colors", "coloured", "colored", "shade"),
    "basecolour": ("colour", "color", "colours", "colors", "coloured", "colored", "shade"),
    "sleeve": ("sleeve", "sleeves", "sleeved", "arms"),
    "neckline": ("neck", "neckline", "necked"),
    "length": ("length", "long", "hem"),
    "fit": ("fit", "fitting", "cut"),
    "pattern": ("pattern", "patterned", "print", "printed"),
    "category": ("category", "type", "kind"),
    "articletype": ("type", "article", "kind", "category"),
    "gender": ("for", "gender"),
    "season": ("season", "for"),
    "usage": ("usage", "for", "occasion", "wear"),
}

STOPWORDS = frozenset("""
a an the same but like this that these those it its one ones in on of for with and or to as so please just
only also instead make made show me find get give want would like i im id something similar version style
more bit little rather than not very same one item items product products but then now please thanks thank
you looking look search
""".split())

# words that say which part of a garment the word before them describes ("short sleeves"): a value is read
# from that word only when its attribute is about that part (so "short sleeves" is never articleType=Shorts)
# words that negate the value after them ("not red", "without the stripes"); phrases the tables know whole,
# such as "no sleeves" (sleeveless), are read as their value first
NEGATIONS = frozenset({"not", "no", "non", "without", "except", "excluding", "never", "nothing", "dont", "isnt",
                       "arent", "nor", "neither"})

PART_WORDS = frozenset({"sleeve", "sleeves", "sleeved", "neck", "necked", "neckline", "length", "hem", "fit",
                        "fitting", "collar"})


class TextQueryError(VestisError):
    pass


@dataclass
class Match:
    text: str          # the words that named the value, as typed (lower-cased)
    attribute: str
    value: str
    how: str           # "exact", "synonym" or "fuzzy"
    score: float = 1.0


@dataclass
class Understanding:
    text: str
    manipulations: dict[str, str] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)
    ambiguous: list[dict] = field(default_factory=list)  # {"text", "candidates": [{attribute, value}]}
    unmatched: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"text": self.text, "manipulations": dict(self.manipulations),
                "matches": [asdict(m) for m in self.matches], "ambiguous": list(self.ambiguous),
                "unmatched": list(self.unmatched)}


def _words(text: str) -> list[str]:
    # NFC first, so an accent typed as a combining mark stays inside its word; [^\W_] is a letter or digit
    text = unicodedata.normalize("NFC", text).lower().replace("'", "").replace("\u2019", "")
    return re.findall(r"[^\W_]+", text)


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "shes", "ches")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _keys(words: Sequence[str]) -> set[str]:
    """The spellings a phrase is looked up under: spaced, compact, and with its last word singular."""
    if not words:
        return set()
    sing = [*words[:-1], _singular(words[-1])]
    return {" ".join(words), "".join(words), " ".join(sing), "".join(sing)}


class TextInterpreter:
    """Reads free-text requests against one attribute schema (built once per schema; `parse` is pure)."""

    def __init__(self, schema: AttributeSchema, synonyms: Mapping[str, Sequence[str]] | None = None):
        self.schema = schema
        self.exact: dict[str, set[tuple[str, str]]] = {}
        self.synonym: dict[str, set[tuple[str, str]]] = {}
        by_name: dict[str, list[tuple[str, str]]] = {}
        for a in schema.attributes:
            for v in schema.values(a):
                for k in _keys(_words(v)):
                    self.exact.setdefault(k, set()).add((a, v))
                by_name.setdefault("".join(_words(v)), []).append((a, v))
        for phrase, names in (synonyms if synonyms is not None else SYNONYMS).items():
            targets = {av for n in names for av in by_name.get("".join(_words(n)), ())}
            if not targets:
                # also singular / plural spellings of the value ("tshirts" for "tshirt")
                targets = {av for n in names for k in _keys(_words(n)) for av in by_name.get(k, ())}
            if targets:
                for k in _keys(_words(phrase)):
                    self.synonym.setdefault(k, set()).update(targets)
        self.fuzzy_keys = sorted(k for k in {*self.exact, *self.synonym} if " " not in k and len(k) >= 4)
        self.attr_words: dict[str, set[str]] = {}
        for a in schema.attributes:
            norm = "".join(_words(a))
            words = {norm, _singular(norm), *ATTRIBUTE_WORDS.get(norm, ()), *ATTRIBUTE_WORDS.get(_singular(norm), ())}
            self.attr_words[a] = words
        self.context_words = set().union(*self.attr_words.values()) if self.attr_words else set()

    def _lookup(self, words: Sequence[str]) -> tuple[set[tuple[str, str]], str]:
        keys = _keys(words)
        hits = set().union(*(self.exact.get(k, set()) for k in keys))
        if hits:
            return hits, "exact"
        hits = set().union(*(self.synonym.get(k, set()) for k in keys))
        return hits, "synonym"

    def _fuzzy(self, words: Sequence[str]) -> tuple[set[tuple[str, str]], float]:
        key = "".join(words)
        if len(key) < 4 or key in STOPWORDS or key in self.context_words:
            return set(), 0.0
        close = difflib.get_close_matches(key, self.fuzzy_keys, n=1, cutoff=FUZZY_CUTOFF)
        if not close:
            return set(), 0.0
        k = close[0]
        score = difflib.SequenceMatcher(None, key, k).ratio()
        return self.exact.get(k, set()) | self.synonym.get(k, set()), score

    def _settle(self, cands: set[tuple[str, str]], words: list[str], i: int, n: int) -> set[tuple[str, str]]:
        """Several attributes could be meant: keep those named by a word next to the phrase."""
        if len({a for a, _ in cands}) < 2:
            return cands
        near = set(words[max(0, i - 2):i]) | set(words[i + n:i + n + 2])
        named = {(a, v) for a, v in cands if self.attr_words[a] & near - {"for"}}
        if len({a for a, _ in named}) == 1:
            return named
        named = {(a, v) for a, v in cands if self.attr_words[a] & near}
        return named if len({a for a, _ in named}) == 1 else cands

    def _refuse_negation(self, words: list[str], i: int, phrase: str, cands: set[tuple[str, str]]) -> None:
        """A negation word just before the phrase (filler words may sit between: "not in red") refuses it."""
        j = i - 1
        while j >= 0 and j >= i - 3 and words[j] in STOPWORDS - NEGATIONS:
            j -= 1
        if j < 0 or words[j] not in NEGATIONS:
            return
        said = " ".join(words[j:i + len(phrase.split())])
        attrs = sorted({a for a, _ in cands})
        others = [v for v in self.schema.values(attrs[0]) if (attrs[0], v) not in cands][:3] if attrs else []
        raise TextQueryError(
            f"negation is not supported: {said!r} asks for anything but " + " or ".join(f"{a}={v}" for a, v in sorted(cands))
            + "; name the value you want instead" + (f" (e.g. {' or '.join(repr(v) for v in others)})" if others else "")
            + ", or filter on the values you accept")

    def parse(self, text: str) -> Understanding:
        if len(text) > MAX_TEXT:
            raise TextQueryError(f"the request is {len(text)} characters long; at most {MAX_TEXT}")
        words = _words(text)
        out = Understanding(text=text)
        used = [False] * len(words)
        i = 0
        while i < len(words):
            found = None
            for n in range(min(MAX_NGRAM, len(words) - i), 0, -1):
                phrase = words[i:i + n]
                if n == 1 and phrase[0] in STOPWORDS:
                    break
                cands, how = self._lookup(phrase)
                if cands:
                    found = (n, cands, how, 1.0)
                    break
            if found is None:
                for n in (2, 1):
                    if i + n <= len(words) and not any(w in STOPWORDS for w in words[i:i + n]):
                        cands, score = self._fuzzy(words[i:i + n])
                        if cands:
                            found = (n, cands, "fuzzy", score)
                            break
            if found is None:
                i += 1
                continue
            n, cands, how, score = found
            nxt = words[i + n] if i + n < len(words) else None
            if nxt in PART_WORDS:
                cands = {(a, v) for a, v in cands if nxt in self.attr_words[a]}
                if not cands:
                    i += 1
                    continue
            cands = self._settle(cands, words, i, n)
            phrase = " ".join(words[i:i + n])
            self._refuse_negation(words, i, phrase, cands)
            for j in range(i, i + n):
                used[j] = True
            if len(cands) == 1:
                (a, v), = cands
                out.matches.append(Match(phrase, a, v, how, round(score, 3)))
            else:
                out.ambiguous.append({"text": phrase, "candidates": [{"attribute": a, "value": v} for a, v in sorted(cands)]})
            i += n
        out.unmatched = [w for w, u in zip(words, used) if not u and w not in STOPWORDS and w not in self.context_words]
        by_attr: dict[str, list[Match]] = {}
        for m in out.matches:
            by_attr.setdefault(m.attribute, []).append(m)
        for a, ms in by_attr.items():
            values = list(dict.fromkeys(m.value for m in ms))
            if len(values) > 1:
                said = ", ".join(f"{m.value} ({m.text!r})" for m in ms)
                raise TextQueryError(f"the request asks for several values of {a}: {said}; ask for one")
            out.manipulations[a] = values[0]
        if not out.manipulations:
            parts = [f"could not map {echo(text, 200)} onto any attribute value"]
            if out.ambiguous:
                parts.append("ambiguous: " + "; ".join(
                    f"{x['text']!r} could be " + " or ".join(f"{c['attribute']}={c['value']}" for c in x["candidates"])
                    for x in out.ambiguous))
            if out.unmatched:
                parts.append("words not understood: " + ", ".join(out.unmatched))
            parts.append("attributes: " + ", ".join(self.schema.attributes))
            raise TextQueryError("; ".join(parts))
        return out
