"""Words for the keyword index, pure functions: the folded form both the index and a query are written in
(case and accents folded, each CJK character a word of its own), the words of a file's name and folders
(split on ``_ - .`` and spaces, camelCase and digits), and a query's terms.

Folding is done here rather than by SQLite's tokenizer so that both FTS5 tables (whole words and
trigrams) see the same text, and so that letters SQLite's ``remove_diacritics`` leaves alone (``ø``,
``æ``, ``ß``, ``ł``) fold too: "Tromsø" is found by "tromso"."""
from __future__ import annotations

import os
import re
import unicodedata

#: letters that carry no combining mark to strip, spelled the way a person types them without the key
_LETTERS = str.maketrans({"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "ł": "l",
                          "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i"})
# Han, Hiragana, Katakana, Hangul syllables and CJK punctuation-free blocks: no spaces between words there
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORD = re.compile(r"\w+")
#: how many trailing path parts name a photo: the file and the two folders above it
NAME_PARTS = 3
#: words too common to say anything in a query of several words (a query of one such word keeps it)
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or that the their there this to with while "
    "near over under up down out".split())


def fold(text: str, space_cjk: bool = True) -> str:
    """`text` as the index stores it: accents and case folded, each CJK character spaced as a word (unless
    not `space_cjk`: a query keeps a run of CJK characters as one term, searched as a phrase)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTERS))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _CJK.sub(lambda m: f" {m.group(0)} ", plain) if space_cjk else plain


def split_camel(word: str) -> list[str]:
    """"kilimanjaroSummit2019" -> ["kilimanjaro", "Summit", "2019"]; "HTMLParser" -> ["HTML", "Parser"]."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(word)):
        a, b = word[i - 1], word[i]
        nxt = word[i + 1] if i + 1 < len(word) else ""
        if (a.isdigit() != b.isdigit()) or (a.islower() and b.isupper()) or \
                (a.isupper() and b.isupper() and nxt.islower()):
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return [p for p in parts if p]


def name_words(path: str, parts: int = NAME_PARTS) -> str:
    """The words of a photo's file name (extension dropped) and the folders above it, for display and the
    index: "/p/Trips/kilimanjaro-summit_2019.JPG" -> "Trips kilimanjaro summit 2019"."""
    names = [p for p in path.replace("\\", "/").split("/") if p][-parts:]
    if names:
        names[-1] = os.path.splitext(names[-1])[0]
    words: list[str] = []
    for name in names:
        for chunk in _WORD.findall(name.replace("_", " ")):
            words.extend(split_camel(chunk))
    return " ".join(words)


def query_terms(query: str) -> list[str]:
    """The folded terms of a query, in order, each once; stopwords dropped when other words remain."""
    terms = list(dict.fromkeys(_WORD.findall(fold(query, space_cjk=False).replace("_", " "))))
    kept = [t for t in terms if t not in STOPWORDS]
    return kept or terms


def fts_phrase(term: str) -> str:
    """`term` as an FTS5 string (a phrase of one word; a CJK run is a phrase of its characters)."""
    return '"' + " ".join(fold(term).split()).replace('"', '""') + '"'


def find_words(text: str, terms: list[str]) -> list[str]:
    """Which of `terms` (folded) occur in `text`: as a word, the start of a word, or (3+ letters) inside one
    (where `word_spans` finds them)."""
    return [t for t in terms if word_spans(text, [t])]


def word_spans(text: str, terms: list[str]) -> list[tuple[int, int]]:
    """Where `terms` (folded) occur in `text`, as ``(start, end)`` positions in `text` itself (code points),
    in order and never overlapping: what a page marks, so that it need not fold ("Tromsø" for "tromso").
    A term of one or two letters counts only at the start of a word; a longer one anywhere."""
    folded_parts, origin = [], []
    for i, c in enumerate(text):  # fold letter by letter, remembering which letter each folded one came from
        f = fold(c, space_cjk=False)
        folded_parts.append(f)
        origin.extend([i] * len(f))
    folded = "".join(folded_parts)
    needles = sorted({"".join(fold(t, space_cjk=False).split()) for t in terms if t.strip()}, key=len, reverse=True)
    spans: list[tuple[int, int]] = []
    at = 0
    while at < len(folded):
        best = None
        for needle in needles:
            i = folded.find(needle, at)
            while i >= 0 and len(needle) < 3 and i > 0 and folded[i - 1].isalnum():
                i = folded.find(needle, i + 1)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(needle))
        if best is None:
            break
        start, end = origin[best[0]], origin[best[1] - 1] + 1
        while end < len(text) and not folded_parts[end]:  # combining marks after the last letter go with it
            end += 1
        spans.append((start, end))
        at = best[1]
    return spans


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of `a` and `b`, or `limit + 1` as soon as it must exceed `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def misread_allowance(term: str) -> int:
    """How many letters OCR may have misread in a word of the query's length (none under 5 letters)."""
    return 0 if len(term) < 5 else 1 if len(term) < 9 else 2


def near_word(term: str, folded_text: str) -> bool:
    """Whether folded text holds `term` with at most `misread_allowance` letters wrong, as one word or as
    two neighbouring words run together (OCR reads "ZORVIK" as "Z0RVIK" or "ZOR VIK")."""
    allowance = misread_allowance(term)
    if not allowance:
        return False
    found = _WORD.findall(folded_text)
    candidates = found + [a + b for a, b in zip(found, found[1:])]
    return any(edit_distance(term, w, allowance) <= allowance for w in candidates)
