"""Bounds on what a person types, and on what an error may say about it: the one place where text fields
(prompts, labels, templates, concepts) and numbers are checked before they cost anything.

Text is checked before tokenising. CLIP reads at most its context (77 tokens, about 300 characters) of a
text, but open_clip's tokenizer first splits all of it into words and runs BPE on each, at a cost that
grows with the square of a word's length (a 20 KB word: 45 s; 1 MB: about 20 h). So a text may have at most
:data:`MAX_TEXT_CHARS` characters, a word (as the tokenizer splits words) at most :data:`MAX_WORD_BYTES`
UTF-8 bytes, and all the texts of one call at most :data:`MAX_TOKENIZER_WORK`, the sum of the squared
lengths of their distinct words (BPE's cost, cached per word). Nothing is cut silently: a text over a
limit is an error naming the field.

Errors are one line of at most :data:`MAX_ERROR_CHARS` characters; :func:`shorten` cuts a name (a path,
a key, a label) with an ellipsis so the line keeps its end.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

# One prompt, label, template or concept: CLIP reads its first 77 tokens (about 300 characters of English);
# 4,096 characters hold the longest prompts people paste.
MAX_TEXT_CHARS = 4096
# All lines of one multiline field: ImageNet-21k's 21,841 class names take 400 KB.
MAX_FIELD_CHARS = 1 << 20
# A word of open_clip's split (a run of letters, or of punctuation) in UTF-8 bytes: BPE costs ~0.1 s at 1,024
# (a Latin word of that length is over 500 tokens; a 340-character CJK run without spaces still passes).
MAX_WORD_BYTES = 1024
# The sum of squared byte lengths of the distinct words of one call: ~1e-7 s each on this project's CPU, so
# ~1 s. 10,000 labels of a few short words use about 1 % of it.
MAX_TOKENIZER_WORK = 10_000_000
# Labels of one classifier (ImageNet-21k: 21,841) and templates per label (open_clip's ImageNet ensemble: 80).
MAX_LABELS = 32768
MAX_TEMPLATES = 256
MAX_ERROR_CHARS = 300
MAX_NAME_CHARS = 120
ELLIPSIS = "…"


def shorten(name: object, limit: int = MAX_NAME_CHARS) -> str:
    """``str(name)`` on one line, at most ``limit`` characters: its start and end around an ellipsis."""
    text = " ".join(str(name).split()) if "\n" in str(name) or "\r" in str(name) else str(name)
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return text[:head] + ELLIPSIS + text[len(text) - (limit - 1 - head):]


def one_line(message: str) -> str:
    """An error message as one line of at most :data:`MAX_ERROR_CHARS` characters."""
    return shorten(message, MAX_ERROR_CHARS)


def error_summary(err: BaseException) -> str:
    """``err`` as its type and the first line of its message (80 characters at most): what a one-line error
    quotes of a cause raised deep inside a library."""
    text = str(err).strip()
    return f"{type(err).__name__}: {shorten(text.splitlines()[0], 80)}" if text else type(err).__name__


@lru_cache(maxsize=1)
def _word_pattern():
    from open_clip.tokenizer import _tokenizer  # the pattern open_clip splits words with
    return _tokenizer.pat


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """``texts`` (one field's texts) if each is within :data:`MAX_TEXT_CHARS`, each word within
    :data:`MAX_WORD_BYTES` and their distinct words within :data:`MAX_TOKENIZER_WORK`; else ``ValueError``
    naming ``what`` (e.g. "prompt", "labels line 3")."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    work, seen = 0, set()
    for i, text in enumerate(texts):
        where = what if len(texts) == 1 else f"{what} {i + 1}"
        if not isinstance(text, str):
            raise ValueError(f"{where} must be text, got {type(text).__name__}")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"{where} is {len(text):,} characters, more than {MAX_TEXT_CHARS:,} (CLIP reads its "
                             f"first 77 tokens, about 300 characters)")
        for word in _word_pattern().findall(text.lower()):
            size = len(word.encode("utf-8"))
            if size > MAX_WORD_BYTES:
                raise ValueError(f"{where} has a word of {size:,} bytes ({shorten(word, 24)!r}), more than "
                                 f"{MAX_WORD_BYTES:,}: CLIP's tokenizer costs the square of a word's length")
            if word not in seen:
                seen.add(word)
                work += size * size
        if work > MAX_TOKENIZER_WORK:
            raise ValueError(f"{shorten(what, 40)}: the words up to {where} would cost the tokenizer "
                             f"{work:,} (sum of squared word lengths), more than {MAX_TOKENIZER_WORK:,}; use "
                             f"fewer or shorter words")
    return texts


def field_lines(text: str, what: str, limit: int) -> list[str]:
    """The non-empty stripped lines of a multiline field: at most :data:`MAX_FIELD_CHARS` characters and
    ``limit`` lines, each checked by :func:`check_texts`; ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, got {type(text).__name__}")
    if len(text) > MAX_FIELD_CHARS:
        raise ValueError(f"{what}: {len(text):,} characters, more than {MAX_FIELD_CHARS:,}")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > limit:
        raise ValueError(f"{what}: {len(lines):,} lines, more than {limit:,}")
    return check_texts(lines, f"{what} line") if len(lines) != 1 else check_texts(lines, what)


def check_template(template: str) -> str:
    """A zero-shot template: text with at least one ``{}`` (the label's place) and no other braces, so
    filling it is a plain replacement (``{x}`` or ``{:>100000000}`` would be a format field)."""
    if "{}" not in template or "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise ValueError(f"templates must each contain '{{}}' where the label goes, and no other braces; got "
                         f"{shorten(template, 60)!r}")
    return template


def fill_template(template: str, label: str) -> str:
    return template.replace("{}", label)


def finite(value: float, what: str) -> float:
    """``value`` if it is a finite number, else ``ValueError`` naming ``what`` (NaN passes ComfyUI's
    min/max checks: every comparison with it is false)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {shorten(repr(value), 40)}")
    return value
