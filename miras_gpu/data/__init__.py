"""Data shipped with miras_gpu: a small public-domain English text for character-level LM.

``alice29.txt.gz``: Lewis Carroll, *Alice's Adventures in Wonderland* (1865), Project
Gutenberg's "Millennium Fulcrum Edition 2.9" as it appears in the Canterbury Corpus
(``alice29.txt``); taken byte for byte from the brotli 1.2.1 source distribution on PyPI
(``tests/testdata/alice29.txt``). See ``README.md`` beside this file for the provenance,
checksums and licence.
"""

from __future__ import annotations

import gzip
from importlib import resources

__all__ = ["ALICE_SHA256", "load_text", "raw_bytes"]

#: SHA-256 of the uncompressed file (identical to brotli-1.2.1/tests/testdata/alice29.txt)
ALICE_SHA256 = "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"
_FILE = "alice29.txt.gz"


def raw_bytes() -> bytes:
    """The shipped file, uncompressed, byte for byte (CRLF line ends, a trailing ``\\x1a``)."""
    with resources.files(__name__).joinpath(_FILE).open("rb") as f:
        return gzip.decompress(f.read())


def load_text() -> str:
    """The text as ASCII with ``\\n`` line ends (CR and the DOS end-of-file byte removed)."""
    data = raw_bytes().replace(b"\r\n", b"\n").replace(b"\x1a", b"")
    return data.decode("ascii")
