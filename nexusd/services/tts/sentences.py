"""Split input text into sentences, so a long input is synthesized piece by piece: the first
audio goes out after the first sentence, and a client that leaves stops the work at the next
sentence boundary instead of after the whole text."""

from __future__ import annotations

import re

# A sentence ends at . ! ? … (or their CJK forms), possibly followed by closing quotes or
# brackets, then whitespace; a blank line ends a paragraph. Abbreviations ("Dr. Smith") are
# split too: harmless for speech, since every backend pauses little at a split.
_BOUNDARY = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+|\n\s*\n")
_SOFT = re.compile(r"[,;:—–]\s+")
MAX_SENTENCE_CHARS = 300


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Non-empty pieces of `text`, each at most `max_chars` long, in order."""
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        pieces.append(text[start:match.end()])
        start = match.end()
    pieces.append(text[start:])
    out: list[str] = []
    for piece in pieces:
        piece = " ".join(piece.split())
        while len(piece) > max_chars:
            cut = _cut_point(piece, max_chars)
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece and any(ch.isalnum() for ch in piece):
            out.append(piece)
    return out


def _cut_point(piece: str, max_chars: int) -> int:
    """Where to split an over-long sentence: the last clause mark, else the last space, else
    hard at max_chars (a text without spaces)."""
    window = piece[:max_chars]
    soft = [m.end() for m in _SOFT.finditer(window)]
    if soft and soft[-1] > max_chars // 3:
        return soft[-1]
    space = window.rfind(" ")
    return space if space > max_chars // 3 else max_chars
