"""C2SP tlog-tiles: a log's Merkle tree as static files, and duet's entry bundles beside it.

Tiles let anyone mirror a log with a plain file server and let a verifier fetch only what
it needs. The hash tiles are exactly the standard ones (`tile/<L>/<N>[.p/<W>]`, 256 hashes of
height-8 subtrees), so generic tlog tooling can read them.

Entries are the exception, on purpose. Standard entry bundles (`tile/entries/...`) prefix
each entry with a uint16 length, so no entry may exceed 65,535 bytes; a duet leaf carries up
to 1 MiB of output per stream and must stay byte-for-byte what the log committed (the leaf
is the canonical JSON the Merkle tree hashes, and old logs must keep verifying). Moving
output into side blobs would change the leaf format for every existing log. So duet serves
its entries at its own path, `tile/duet-entries/<N>[.p/<W>]`, with the same tiling and a
big-endian uint32 length prefix, and does not serve `tile/entries` at all (a bundle that
cannot hold an entry cannot be served correctly). Each entry still hashes to the
corresponding level-0 hash, so a reader checks the bundle against the tiles and the tiles
against a signed checkpoint.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Sequence

from duet.ledger import merkle
from duet.ledger.errors import LedgerError

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
ENTRIES_DIR = "duet-entries"
MAX_ENTRY_BYTES = 16 << 20
"""Largest single entry a reader accepts from a bundle (a leaf is at most a few MiB)."""


class TileError(LedgerError):
    code = "tile_invalid"


def encode_index(n: int) -> str:
    """Tile index as zero-padded 3-digit path elements, all but the last prefixed `x`."""
    if n < 0:
        raise TileError(f"tile index {n} is negative")
    parts = []
    while True:
        parts.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    parts.reverse()
    return "/".join([f"x{p}" for p in parts[:-1]] + [parts[-1]])


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """`tile/<L>/<N>[.p/<W>]`; `level` -1 names duet's entry bundles."""
    if not -1 <= level <= 63 or not 1 <= width <= TILE_WIDTH:
        raise TileError(f"no tile at level {level} with width {width}")
    head = ENTRIES_DIR if level == -1 else str(level)
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{head}/{encode_index(index)}{suffix}"


_INDEX_PART = re.compile(r"x[0-9]{3}")
_LAST_PART = re.compile(r"([0-9]{3})(?:\.p/([1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5]))?")
_LEVEL = re.compile(r"0|[1-9][0-9]?")


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) of `<L>/<N>[.p/<W>]` or `duet-entries/<N>[.p/<W>]` (level -1),
    the part after `tile/`. Strict: one spelling per tile, as the spec defines it."""
    head, _, rest = path.partition("/")
    if head == ENTRIES_DIR:
        level = -1
    elif _LEVEL.fullmatch(head) and int(head) <= 63:
        level = int(head)
    else:
        raise TileError(f"no tile level {head[:20]!r}")
    parts = rest.replace(".p/", ".p|").split("/")
    last = _LAST_PART.fullmatch(parts[-1].replace(".p|", ".p/")) if parts else None
    if last is None or not all(_INDEX_PART.fullmatch(p) for p in parts[:-1]) or len(parts) > 7:
        raise TileError(f"malformed tile index {rest[:60]!r}")
    index = int("".join(p[1:] for p in parts[:-1]) + last.group(1))
    if parts[:-1] and parts[0] == "x000":
        raise TileError("tile index has a leading zero group")
    return level, index, int(last.group(2) or TILE_WIDTH)


def tiles_for_size(size: int) -> Iterator[tuple[int, int, int]]:
    """(level, index, width) of every tile a tree of `size` leaves is served as: full
    tiles, plus the partial tile of each level whose width `floor(size/256**l) mod 256` is
    not zero."""
    level = 0
    while size >> (TILE_HEIGHT * level):
        hashes_at_level = size >> (TILE_HEIGHT * level)
        full, partial = divmod(hashes_at_level, TILE_WIDTH)
        for index in range(full):
            yield level, index, TILE_WIDTH
        if partial:
            yield level, full, partial
        level += 1


def tile_hashes(subtree: Callable[[int, int], bytes], level: int, index: int, width: int) -> list[bytes]:
    """The hashes a tile holds: MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l]) for i < width.
    `subtree(lo, hi)` returns the Merkle hash of leaves [lo, hi) (a complete subtree)."""
    span = 1 << (TILE_HEIGHT * level)
    first = index * TILE_WIDTH
    return [subtree((first + i) * span, (first + i + 1) * span) for i in range(width)]


def encode_bundle(leaves: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(leaf)) + leaf for leaf in leaves)


def decode_bundle(data: bytes, width: int) -> list[bytes]:
    """Exactly `width` uint32-length-prefixed entries, nothing after them."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise TileError("entry bundle ends inside a length prefix")
        (n,) = struct.unpack_from(">I", data, pos)
        if n > MAX_ENTRY_BYTES or pos + 4 + n > len(data):
            raise TileError(f"entry {len(out)} of the bundle is longer than the bundle allows")
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
        if len(out) > width:
            break
    if len(out) != width:
        raise TileError(f"entry bundle holds {len(out)} entries, expected {width}")
    return out


def decode_tile(data: bytes, width: int) -> list[bytes]:
    if len(data) != width * merkle.HASH_SIZE:
        raise TileError(f"tile is {len(data)} bytes, expected {width} hashes")
    return [data[i:i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]


def root_from_level0(hashes: Sequence[bytes]) -> bytes:
    """The tree root from every leaf hash (what a full reader recomputes)."""
    return merkle.root(hashes)


def export_tree(leaves: Sequence[bytes], write: Callable[[str, bytes], None]) -> None:
    """Write every hash tile and entry bundle of a log with these leaves via `write(path, data)`
    (a static mirror; the checkpoint is written by the caller)."""
    level0 = [merkle.leaf_hash(x) for x in leaves]
    memo: dict[tuple[int, int], bytes] = {}

    def subtree(lo: int, hi: int) -> bytes:
        key = (lo, hi)
        if key not in memo:
            if hi - lo == 1:
                memo[key] = level0[lo]
            else:
                mid = lo + (hi - lo) // 2
                memo[key] = merkle.node_hash(subtree(lo, mid), subtree(mid, hi))
        return memo[key]

    for level, index, width in tiles_for_size(len(leaves)):
        write(tile_path(level, index, width), b"".join(tile_hashes(subtree, level, index, width)))
        if level == 0:
            first = index * TILE_WIDTH
            write(tile_path(-1, index, width), encode_bundle(leaves[first:first + width]))


def read_leaves(size: int, fetch: Callable[[str], bytes]) -> list[bytes]:
    """Every leaf of a tree of `size`, each checked against its level-0 tile hash. The caller
    then checks the root of the level-0 hashes against a checkpoint it verified."""
    leaves: list[bytes] = []
    for level, index, width in tiles_for_size(size):
        if level != 0:
            continue
        hashes = decode_tile(fetch(tile_path(0, index, width)), width)
        bundle = decode_bundle(fetch(tile_path(-1, index, width)), width)
        for i, (leaf, h) in enumerate(zip(bundle, hashes, strict=True)):
            if merkle.leaf_hash(leaf) != h:
                raise TileError(f"entry {index * TILE_WIDTH + i} does not hash to its level-0 tile hash")
        leaves.extend(bundle)
    return leaves
