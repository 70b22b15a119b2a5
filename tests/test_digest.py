"""The content digest read from a descriptor: the bytes' BLAKE3 whatever the file's size and the order of sizes
one thread reads (its buffer grows to the largest file seen, at most a chunk)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3

from vocwatch.edges.digest import CHUNK, blake3_of, of_path, sha256_of


def test_digests_are_of_the_whole_file_in_any_order_of_sizes(tmp_path: Path) -> None:
    for i, size in enumerate([0, 1, 4095, 3 * CHUNK + 7, 4097, CHUNK, 10, CHUNK + 1]):
        data = os.urandom(size)
        path = tmp_path / f"f{i}"
        path.write_bytes(data)
        assert of_path(path, blake3_of) == "blake3:" + blake3.blake3(data).hexdigest(), size
        assert of_path(path, sha256_of) == hashlib.sha256(data).hexdigest(), size
