"""RFC 9162 §2.1 Merkle trees: hashing, tree heads, proofs and their verification.

Everything here is a pure function over hashes: no I/O and no state, so the same code
serves the controller (which builds proofs from its store) and a service user (who
verifies them). The verification functions follow the RFC's algorithms step by step
(§2.1.3.2 and §2.1.4.2) rather than a cleverer equivalent, because third parties
implement exactly those algorithms and a divergence would be a protocol bug.

Proof *generation* is split in two: :func:`inclusion_ranges` and
:func:`consistency_ranges` say which subtrees (leaf ranges ``[lo, hi)``) a proof is made
of, and :func:`subtree_nodes` splits such a range into complete ("perfect") subtrees.
The in-memory functions below hash those ranges from a list of leaf hashes; the store
reads the same complete-subtree hashes from disk, so a proof costs O(log n) reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from duet.ledger.errors import OutOfRange, ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    """Hash of a leaf: SHA-256(0x00 ‖ leaf); the prefix keeps leaves and nodes apart."""
    return _sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n ≥ 2): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash (MTH) of the leaves whose hashes are given; EMPTY_ROOT for none.

    Hashes level by level, carrying an odd last node up unchanged. That is the same tree
    as the RFC's recursive split at the largest power of two (the last node of a level is
    always the right edge), but costs one pass per level instead of recursion.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha, prefix = _sha256, _NODE_PREFIX
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=False)  # an odd last node is carried up
        paired = [sha(prefix + a + b).digest() for a, b in pairs]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def subtree_nodes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the leaf range ``[lo, hi)`` into complete subtrees, left to right.

    Each result is ``(level, index)``: the subtree of 2**level leaves starting at leaf
    ``index * 2**level``. Folding their hashes from the right (:func:`fold_subtrees`) gives
    MTH(D[lo:hi]). Only ranges that are subtrees of some RFC tree are accepted (``lo``
    aligned to the range's largest block), which holds for every range a proof uses and
    for ``[0, n)``; anything else raises :class:`OutOfRange`.
    """
    if lo < 0 or hi < lo:
        raise OutOfRange(f"invalid leaf range [{lo}, {hi})")
    out: list[tuple[int, int]] = []
    pos, size = lo, hi - lo
    for level in range(size.bit_length() - 1, -1, -1):
        if (size >> level) & 1:
            if pos % (1 << level):
                raise OutOfRange(f"leaf range [{lo}, {hi}) is not a subtree of any Merkle tree")
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Hash of a range from its complete subtrees' hashes (as listed by subtree_nodes)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree hashes form the inclusion proof of ``index`` in ``size``.

    This is RFC 9162 §2.1.3.1 PATH(m, D[n]) with the recursion unrolled: at each split the
    sibling subtree is recorded, and the result is reversed into the RFC's bottom-up order.
    """
    if not 0 <= index < size:
        raise OutOfRange(f"leaf index {index} is out of range for tree size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split_point(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree hashes form the consistency proof old_size → new_size.

    RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], true) unrolled; the proof is empty when
    ``old_size`` is 0 or equal to ``new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise OutOfRange(f"tree sizes {old_size} → {new_size} are not 0 ≤ old ≤ new")
    if old_size in (0, new_size):
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, whole = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                out.append((lo, hi))
            break
        k = _split_point(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    out.reverse()
    return out


def _range_hashes(leaf_hashes: Sequence[bytes], ranges: Iterable[tuple[int, int]]) -> list[bytes]:
    return [root(leaf_hashes[lo:hi]) for lo, hi in ranges]


def _check_tree_size(leaf_hashes: Sequence[bytes], size: int) -> None:
    if not 0 <= size <= len(leaf_hashes):
        raise OutOfRange(f"tree size {size} is out of range: {len(leaf_hashes)} leaves given")


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree of the first ``size`` leaves (bottom-up)."""
    _check_tree_size(leaf_hashes, size)
    return _range_hashes(leaf_hashes, inclusion_ranges(index, size))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof between the trees of the first ``old_size`` and ``new_size`` leaves."""
    _check_tree_size(leaf_hashes, new_size)
    return _range_hashes(leaf_hashes, consistency_ranges(old_size, new_size))


def _check_hashes(what: str, hashes: Iterable[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(
                f"{what}[{i}] is {len(h)} bytes, a SHA-256 hash is {HASH_SIZE}",
                check="hash_length",
            )


def _check_hash(what: str, h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(
            f"{what} is {len(h)} bytes, a SHA-256 hash is {HASH_SIZE}", check="hash_length"
        )


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that an inclusion proof leads to: RFC 9162 §2.1.3.2 steps 1–4 and sn == 0.

    Raises :class:`ProofError` if the index is out of range or the proof has the wrong
    number of hashes; comparing the result with a trusted root is the caller's step 5.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_hashes("proof", proof)
    # Step 1.
    if not 0 <= index < size:
        raise ProofError(
            f"leaf index {index} is out of range for tree size {size}",
            check="index_out_of_range",
        )
    expected = len(inclusion_ranges(index, size))
    # Steps 2-3.
    fn, sn = index, size - 1
    r = leaf_hash
    # Step 4.
    for p in proof:
        if sn == 0:  # 4a
            raise ProofError(
                f"inclusion proof has {len(proof)} hashes, leaf {index} of a tree of "
                f"{size} needs {expected}",
                check="proof_length",
            )
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    # Step 5, first half.
    if sn != 0:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes, leaf {index} of a tree of "
            f"{size} needs {expected}",
            check="proof_length",
        )
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns nothing on success; raises :class:`ProofError` whose
    ``check`` is ``hash_length``, ``index_out_of_range``, ``proof_length`` or
    ``root_mismatch``.
    """
    _check_hash("root", root)
    calculated = root_from_inclusion(leaf_hash, index, size, proof)
    if calculated != root:
        raise ProofError(
            f"inclusion proof leads to root {calculated.hex()}, expected {root.hex()}",
            check="root_mismatch",
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 §2.1.4.2, plus the two cases the RFC's algorithm leaves to the caller: equal
    sizes need an empty proof and equal roots, and the empty tree (whose root must be
    SHA-256("")) is a prefix of every tree with an empty proof. Raises
    :class:`ProofError` (``check`` as for :func:`verify_inclusion`, ``size_order`` for
    old_size > new_size).
    """
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    _check_hashes("proof", proof)
    if old_size < 0 or old_size > new_size:
        raise ProofError(
            f"tree sizes {old_size} → {new_size} are not 0 ≤ old ≤ new", check="size_order"
        )
    expected = len(consistency_ranges(old_size, new_size))
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof {old_size} → {new_size} must be empty, has {len(proof)} hashes",
                check="proof_length",
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                f"root of the empty tree is {EMPTY_ROOT.hex()}, got {old_root.hex()}",
                check="root_mismatch",
            )
        if old_size == new_size and old_root != new_root:
            raise ProofError(
                f"trees of equal size {new_size} have different roots "
                f"{old_root.hex()} and {new_root.hex()}",
                check="root_mismatch",
            )
        return

    def length_error() -> ProofError:
        return ProofError(
            f"consistency proof {old_size} → {new_size} has {len(proof)} hashes, needs {expected}",
            check="proof_length",
        )

    # Step 1.
    if not proof:
        raise length_error()
    path = list(proof)
    # Step 2.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # Step 3.
    fn, sn = old_size - 1, new_size - 1
    # Step 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:  # 6a
            raise length_error()
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise length_error()
    if fr != old_root:
        raise ProofError(
            f"consistency proof leads to old root {fr.hex()}, expected {old_root.hex()}",
            check="root_mismatch",
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof leads to new root {sr.hex()}, expected {new_root.hex()}",
            check="root_mismatch",
        )


class CompactRange:
    """Streaming tree head: the complete subtrees covering leaves [0, size).

    Appending a leaf hash costs amortised O(1) hashes and memory stays O(log n), so full
    verification of a log of any length can recompute its root without holding its leaves.
    :meth:`append` returns the interior nodes it completed, which is what the store
    persists so that proofs never need a pass over the log.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, subtree_hashes: Sequence[bytes] = ()) -> None:
        """Start from ``size`` leaves whose complete subtrees (as subtree_nodes(0, size)
        lists them) have ``subtree_hashes``."""
        nodes = subtree_nodes(0, size)
        if len(nodes) != len(subtree_hashes):
            raise OutOfRange(
                f"a tree of {size} leaves has {len(nodes)} edge subtrees, "
                f"{len(subtree_hashes)} hashes given"
            )
        self.size = size
        self._stack: list[tuple[int, bytes]] = [
            (level, h) for (level, _), h in zip(nodes, subtree_hashes, strict=True)
        ]

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the (level, index, hash) of each node it completed."""
        stack = self._stack
        completed: list[tuple[int, int, bytes]] = []
        level, h = 0, leaf_hash
        end = self.size + 1
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            h = node_hash(left, h)
            level += 1
            completed.append((level, (end >> level) - 1, h))
        stack.append((level, h))
        self.size = end
        return completed

    def subtree_hashes(self) -> list[bytes]:
        """Hashes of the edge subtrees, largest first (the order subtree_nodes uses)."""
        return [h for _, h in self._stack]

    def root(self) -> bytes:
        """Root of the tree of the leaves appended so far."""
        return fold_subtrees(self.subtree_hashes())

    def copy(self) -> CompactRange:
        """An independent copy, so a failed batch can be abandoned without undo logic."""
        clone = CompactRange.__new__(CompactRange)
        clone.size = self.size
        clone._stack = list(self._stack)
        return clone
