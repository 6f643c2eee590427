"""Item languages as ISO 639-1 codes: declared tags normalized ("en-GB", "ukr", "English"), checked for
plausibility against the text's script, and detected offline with py3langid when missing or implausible.

Pure: the detector model ships with py3langid and is loaded once, lazily, with py3langid and numpy
(~17 MB, the model ~9 MB more: a process whose feeds declare plausible languages loads none); no network.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import cache
from typing import Any

# ----------------------------------------------------------------------------------------- codes

_ISO_639_CODES = (
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de "
    "dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id "
    "ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu "
    "lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu "
    "rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr "
    "ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"
)
_ISO_639_1 = frozenset(_ISO_639_CODES.split())
# ISO 639-2 (B and T) codes and English names of common languages, and retired 639-1 codes.
_ALIAS_TABLE = """
en:eng english|uk:ukr ukrainian|ru:rus russian|de:deu ger german|fr:fra fre french|es:spa spanish
it:ita italian|pt:por portuguese|pl:pol polish|nl:nld dut dutch|zh:zho chi chinese|ja:jpn japanese
ko:kor korean|ar:ara arabic|he:heb hebrew iw|tr:tur turkish|cs:ces cze czech|sk:slk slo slovak
sl:slv slovenian|hr:hrv croatian|sr:srp serbian|bs:bos|bg:bul bulgarian|ro:ron rum romanian
hu:hun hungarian|fi:fin finnish|sv:swe swedish|no:nor norwegian|nb:nob|nn:nno|da:dan danish
is:isl ice|et:est estonian|lv:lav latvian|lt:lit lithuanian|be:bel belarusian|ka:kat geo georgian
hy:hye arm armenian|az:aze|kk:kaz kazakh|uz:uzb|fa:fas per persian|hi:hin hindi|bn:ben bengali bangla
ur:urd urdu|ta:tam tamil|te:tel|th:tha thai|vi:vie vietnamese|id:ind indonesian in|ms:msa may malay
el:ell gre greek|ca:cat catalan|eu:eus baq basque|gl:glg|ga:gle irish|cy:cym wel welsh|af:afr
sw:swa swahili|am:amh|mk:mkd mac|sq:sqi alb|mt:mlt|lb:ltz|eo:epo esperanto|la:lat latin|yi:yid ji
tl:tgl tagalog
"""


def _language_aliases(table: str) -> dict[str, str]:
    aliases = {}
    for entry in table.replace("\n", "|").split("|"):
        if entry.strip():
            code, _, names = entry.strip().partition(":")
            aliases.update(dict.fromkeys(names.split(), code))
    return aliases


_LANGUAGE_ALIASES = _language_aliases(_ALIAS_TABLE)


def normalize_language(value: str | None) -> str | None:
    """ISO 639-1 lower case ("en-GB" -> "en", "ukr" -> "uk", "English" -> "en"); None if unknown."""
    if not value:
        return None
    primary = value.strip().replace("_", "-").split("-")[0].casefold()
    if primary in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[primary]
    return primary if primary in _ISO_639_1 else None


# ----------------------------------------------------------------------------------------- scripts

# The scripts a language is written in (Unicode character name prefixes); the rest use Latin.
_SCRIPT_TABLE = """
CYRILLIC: ru uk be bg mk kk ky tg mn ba cv ce os tt sr
ARABIC: ar fa ur ps sd ug ku
HEBREW: he yi
GREEK: el
CJK: zh ja ko
HIRAGANA KATAKANA: ja
HANGUL: ko
DEVANAGARI: hi mr ne sa
BENGALI: bn as
THAI: th
GEORGIAN: ka
ARMENIAN: hy
TAMIL: ta
TELUGU: te
KANNADA: kn
MALAYALAM: ml
GUJARATI: gu
GURMUKHI: pa
SINHALA: si
KHMER: km
LAO: lo
MYANMAR: my
ETHIOPIC: am ti
TIBETAN: bo dz
"""
_LATIN_TOO = frozenset({"sr", "ku", "uz", "az", "tk", "ms"})


def _script_table(table: str) -> dict[str, frozenset[str]]:
    scripts: dict[str, set[str]] = {}
    for line in table.strip().split("\n"):
        names, _, codes = line.partition(":")
        for code in codes.split():
            scripts.setdefault(code, set()).update(names.split())
    for code in _LATIN_TOO:
        scripts.setdefault(code, set()).add("LATIN")
    return {code: frozenset(names) for code, names in scripts.items()}


_SCRIPTS = _script_table(_SCRIPT_TABLE)
_MIN_SCRIPT_LETTERS = 20  # fewer letters than this say nothing about the script


@cache
def _script(char: str) -> str:
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else ""


def dominant_script(text: str) -> str | None:
    """The script most of the letters are in ("LATIN", "CYRILLIC", "CJK", ...); None for too few."""
    counts: dict[str, int] = {}
    for char, n in Counter(text).items():  # distinct characters, in order of first appearance
        if char.isalpha():
            script = _script(char)
            counts[script] = counts.get(script, 0) + n
    if not counts:
        return None
    script, count = max(counts.items(), key=lambda kv: kv[1])
    return script if count >= _MIN_SCRIPT_LETTERS and script else None


def plausible(code: str, text: str) -> bool:
    """False when the text is plainly in a script the language is not written in (a feed that says
    "en" for Chinese articles); True when the text is too short to tell."""
    script = dominant_script(text)
    return script is None or script in _SCRIPTS.get(code, frozenset({"LATIN"}))


# ----------------------------------------------------------------------------------------- detection

_MIN_DETECT_LETTERS = 40  # below this, guesses are noise ("Hello" is 17% English)
_MIN_PROBABILITY = 0.9
_SAMPLE_CHARS = 600  # enough for the detector and the script count; cost grows with length


@cache
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # numpy too: only when detecting

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code py3langid finds with at least 90% confidence; None for short or unclear text."""
    sample = text[:_SAMPLE_CHARS]
    if sum(char.isalpha() for char in sample) < _MIN_DETECT_LETTERS:
        return None
    code, probability = _classify(sample)
    if probability < _MIN_PROBABILITY:
        return None
    return normalize_language(str(code))


def _classify(text: str) -> tuple[str, float]:
    """py3langid's classify, on the features the text has only: its dense uint16 x float32 product
    runs through a threaded BLAS that spins on a busy machine (2 ms a call, 10 under load); this
    sparse one, in float64, costs microseconds and gives the same language."""
    import numpy as np  # loaded by _identifier already

    model = _identifier()
    features = model.instance2fv(text)
    present = np.flatnonzero(features)
    logprob = features[present].astype(np.float64) @ model.nb_ptc[present].astype(np.float64) + model.nb_pc
    probs = model.norm_probs(logprob)
    best = int(np.argmax(probs))
    return str(model.nb_classes[best]), float(probs[best])


def item_language(declared: str | None, title: str, text: str) -> tuple[str | None, bool]:
    """(language, detected): the declared language when it is a known code and plausible for the text,
    else the detected one (``detected`` is then True), else None."""
    sample = f"{title}\n{text[:_SAMPLE_CHARS]}"
    code = normalize_language(declared)
    if code is not None and plausible(code, sample):
        return code, False
    found = detect_language(sample)
    return found, found is not None and found != code  # a detector that agrees confirms the declaration
