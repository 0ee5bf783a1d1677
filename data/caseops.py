"""CaseOps: the lossless case transform of the records since 2026-04-18 and its per-token byte sidecar.

The transform (named ``lossless_caps_caseops_v1`` by the records) rewrites every maximal run of ASCII letters
``[A-Za-z]+`` in lower case, with an operator character in front that says how to restore it:

* a lower-case word stays as it is;
* a word of two or more letters, all capitals -> ``ALLCAPS`` + the word in lower case;
* a capital followed by lower-case letters only (or a single capital) -> ``TITLE`` + the word in lower case;
* any other mix -> ``TITLE`` if the first letter is a capital, then the letters in lower case with ``CAPNEXT``
  in front of every later capital (``McDonald`` -> ``TITLE m c CAPNEXT d o n a l d``);
* an operator character already in the text is escaped: ``ESC`` + the character.

Everything else (digits, punctuation, whitespace, non-ASCII letters) is left alone. The operators are the
private-use characters U+E001 (TITLE), U+E002 (ALLCAPS), U+E003 (CAPNEXT) and U+E004 (ESC); the CaseOps
tokenizer reserves them as the user-defined pieces 4-7, so each is always a token of its own.

The sidecar gives each validation token the number of bytes of the *original* text it stands for: the bytes of
the characters its piece covers, where an operator inserted by the transform counts 0 (a lower-cased letter
still counts 1, its capital's byte). BOS counts 0. Summed over a document it is the document's UTF-8 length, so
bits per byte are measured on the untransformed text.
"""

from __future__ import annotations

import re

import numpy as np

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)  # user_defined_symbols, in this order: ids 4, 5, 6, 7
TEXT_TRANSFORM = "lossless_caps_caseops_v1"  # the records' name for this transform
FIRST_OPERATOR_ID = 4

_ENCODE_RE = re.compile("[A-Za-z]+|[\ue001-\ue004]")
_DECODE_RE = re.compile("\ue004([\\s\\S])|\ue002([a-z]+)|(\ue001?)([a-z](?:\ue003?[a-z])*)|[\ue001-\ue004]")
# In UTF-8 an operator is EE 80 81..84; an ESC (EE 80 84) and the operator it escapes form one match.
_OPERATOR_BYTES_RE = re.compile(rb"\xee\x80\x84\xee\x80[\x81-\x84]|\xee\x80[\x81-\x84]")


class CaseOpsError(ValueError):
    """A text that is not the output of :func:`encode` (a misplaced or dangling operator)."""


def _encode_match(m: re.Match) -> str:
    word = m.group(0)
    if word in OPERATORS:
        return ESC + word
    if word.islower():
        return word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[1:].islower() or len(word) == 1:  # TitleCase, or one capital
        return TITLE + lower
    out = [TITLE + lower[0] if word[0].isupper() else lower[0]]
    for orig, low in zip(word[1:], lower[1:]):
        out.append(CAPNEXT + low if orig.isupper() else low)
    return "".join(out)


def encode(text: str) -> str:
    """The CaseOps transform of ``text`` (see the module docstring)."""
    return _ENCODE_RE.sub(_encode_match, text)


def _decode_match(m: re.Match) -> str:
    escaped, allcaps, title, word = m.group(1), m.group(2), m.group(3), m.group(4)
    if escaped is not None:
        return escaped
    if allcaps is not None:
        return allcaps.upper()
    if word is None:
        raise CaseOpsError(f"operator U+{ord(m.group(0)):04X} at character {m.start()} is not followed by what it "
                           "applies to")
    parts = word.split(CAPNEXT)
    head = parts[0][0].upper() + parts[0][1:] if title else parts[0]
    return head + "".join(p[0].upper() + p[1:] for p in parts[1:])


def decode(text: str) -> str:
    """The inverse of :func:`encode`: ``decode(encode(s)) == s`` for every string ``s``. Raises
    :class:`CaseOpsError` for a text that ``encode`` cannot produce (so the inverse is exact both ways)."""
    out = _DECODE_RE.sub(_decode_match, text)
    if encode(out) != text:
        raise CaseOpsError("not a CaseOps text: operators in places the transform never puts them")
    return out


def byte_costs(transformed_utf8: bytes) -> np.ndarray:
    """Original bytes per byte of the transformed text's UTF-8 (int64, same length): 1 everywhere, except the 3
    bytes of each operator the transform inserted, which count 0. An escaped literal operator counts its 3 bytes
    (the ESC in front of it counts 0). The sum is the original text's UTF-8 length."""
    cost = np.ones(len(transformed_utf8), dtype=np.int64)
    for m in _OPERATOR_BYTES_RE.finditer(transformed_utf8):
        cost[m.start():m.start() + 3] = 0  # the operator itself, or the ESC of an escaped pair
    return cost


def token_original_bytes(transformed_utf8: bytes, offsets) -> np.ndarray:
    """Original bytes of each token, from the byte spans ``offsets`` ([(begin, end), ...] into the transformed
    UTF-8, as SentencePiece's ``offset_mapping`` with ``return_bytes=True`` gives them)."""
    cum = np.zeros(len(transformed_utf8) + 1, dtype=np.int64)
    np.cumsum(byte_costs(transformed_utf8), out=cum[1:])
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return cum[spans[:, 1]] - cum[spans[:, 0]]


def reserved_operator_ids(sp) -> dict[int, str]:
    """``{id: operator}`` for the CaseOps operators that ``sp`` (a SentencePieceProcessor) holds as pieces of
    their own (user-defined symbols); empty for an ordinary tokenizer."""
    found = {}
    for op in OPERATORS:
        i = int(sp.piece_to_id(op))
        if sp.id_to_piece(i) == op and not (sp.is_unknown(i) or sp.is_control(i) or sp.is_byte(i)):
            found[i] = op
    return found
