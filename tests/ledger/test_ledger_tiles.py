"""C2SP tlog-tiles layout (the spec's own worked examples) and duet's entry bundles."""

from __future__ import annotations

import pytest

from duet.ledger import merkle
from duet.ledger.tiles import (
    TileError,
    decode_bundle,
    decode_tile,
    encode_index,
    export_tree,
    read_leaves,
    tile_path,
    tiles_for_size,
)


def test_paths_follow_the_spec() -> None:
    assert encode_index(1234067) == "x001/x234/067"  # the spec's example
    assert encode_index(0) == "000" and encode_index(1000) == "x001/000"
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(2, 5, 17) == "tile/2/005.p/17"
    assert tile_path(-1, 3, 1) == "tile/duet-entries/003.p/1"
    with pytest.raises(TileError):
        tile_path(0, 0, 0)  # empty tiles are never served


def test_tiles_of_a_tree_match_the_spec_examples() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0
    # tile of width 112, one full level 1 tile, one partial level 1 tile of width 17, and one
    # partial level 2 tile of width 1"
    tiles = list(tiles_for_size(70_000))
    level0 = [t for t in tiles if t[0] == 0]
    assert sum(1 for t in level0 if t[2] == 256) == 273 and (0, 273, 112) in level0
    assert [t for t in tiles if t[0] == 1] == [(1, 0, 256), (1, 1, 17)]
    assert [t for t in tiles if t[0] == 2] == [(2, 0, 1)]
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1 tile of width 1"
    assert list(tiles_for_size(256)) == [(0, 0, 256), (1, 0, 1)]
    assert list(tiles_for_size(0)) == []


@pytest.mark.parametrize("size", [1, 255, 256, 257, 600])
def test_export_and_read_back(size: int) -> None:
    leaves = [f"entry {i}".encode() * (1 + i % 3) for i in range(size)]
    leaves[0] = b"x" * 70_000  # larger than a standard uint16-prefixed bundle could hold
    files: dict[str, bytes] = {}
    export_tree(leaves, files.__setitem__)
    assert read_leaves(size, files.__getitem__) == leaves
    # a level-1 hash is the Merkle hash of the full level-0 tile below it
    if size >= 256:
        level0 = decode_tile(files[tile_path(0, 0)], 256)
        level1 = files[tile_path(1, 0, size // 256)]
        assert level1[:32] == merkle.root(level0)
    # a changed entry, a changed tile hash and a bundle with a trailing byte are all refused
    for path, mutate in ((tile_path(-1, 0, min(size, 256)), lambda b: b[:-1] + bytes([b[-1] ^ 1])),
                         (tile_path(0, 0, min(size, 256)), lambda b: bytes([b[0] ^ 1]) + b[1:]),
                         (tile_path(-1, 0, min(size, 256)), lambda b: b + b"\0")):
        bad = dict(files)
        bad[path] = mutate(files[path])
        with pytest.raises(TileError):
            read_leaves(size, bad.__getitem__)


def test_bundle_bounds() -> None:
    with pytest.raises(TileError):
        decode_bundle(b"\xff\xff\xff\xff", 1)  # a length far beyond the data
    with pytest.raises(TileError):
        decode_bundle(b"\0\0\0\x01a\0\0\0\x01b", 1)  # one entry too many
    with pytest.raises(TileError):
        decode_tile(b"\0" * 31, 1)


def test_tile_paths_parse_back_strictly() -> None:
    from duet.ledger.tiles import parse_tile_path

    for level, index, width in [(0, 0, 256), (0, 1234067, 7), (3, 999, 255), (-1, 1000, 1), (63, 5, 256)]:
        assert parse_tile_path(tile_path(level, index, width)[len("tile/"):]) == (level, index, width)
    for bad in ["00/000", "64/000", "0/0", "0/x001", "0/x000/001", "0/000.p/256", "0/000.p/0", "0/000.p/07",
                "entries/000", "0/../000", "0/000/", "0/x1/000", ""]:
        with pytest.raises(TileError):
            parse_tile_path(bad)
