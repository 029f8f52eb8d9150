"""RFC 9162 Merkle tree code against published vectors, a literal transcription of the
RFC's recursive definitions, and random trees up to 2000 leaves."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duet.ledger import merkle
from duet.ledger.errors import OutOfRange, ProofError

VECTORS = Path(__file__).parent / "vectors"
TD = VECTORS / "transparency-dev-merkle"


def b64(text: str) -> bytes:
    return base64.b64decode(text)


# --- a literal transcription of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1 ------------------
# Recursive and slow on purpose: it shares no code with merkle.py, so agreement means
# something.


def ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


LEAVES = [f"leaf-{i}".encode() * (1 + i % 3) for i in range(2000)]
HASHES = [merkle.leaf_hash(x) for x in LEAVES]


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


# --- published vectors -------------------------------------------------------------------


def test_reference_tree_roots_and_subtrees() -> None:
    ref = json.loads((VECTORS / "rfc6962_reference_tree.json").read_text())
    leaves = [bytes.fromhex(x) for x in ref["leaf_inputs_hex"]]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    for size, want in enumerate(ref["root_hash_by_tree_size_hex"]):
        assert merkle.root(hashes[:size]).hex() == want, size
    for level, row in enumerate(ref["node_hashes_by_level_hex"]):
        for idx, want in enumerate(row):
            lo, hi = idx << level, (idx + 1) << level
            assert merkle.root(hashes[lo:hi]).hex() == want, (level, idx)
    extra = ref["extra"][0]
    assert merkle.leaf_hash(extra["data_utf8"].encode()) == b64(extra["leaf_hash_b64"])


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


def _vector_files(kind: str) -> list[Path]:
    files = sorted((TD / kind).glob("*/*.json"))
    assert files, f"no {kind} vectors found under {TD}"
    return files


@pytest.mark.parametrize("path", _vector_files("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transparency_dev_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (b64(v["leafHash"]), v["leafIdx"], v["treeSize"], [b64(p) for p in v["proof"] or []])
    if v["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*args, b64(v["root"]))
    else:
        merkle.verify_inclusion(*args, b64(v["root"]))


@pytest.mark.parametrize("path", _vector_files("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transparency_dev_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], [b64(p) for p in v["proof"] or []])
    roots = (b64(v["root1"]), b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(*args, *roots)
    else:
        merkle.verify_consistency(*args, *roots)


def test_vector_happy_paths_are_what_we_generate() -> None:
    """The happy-path proofs in the vectors are over the reference tree; our generator
    must produce exactly them (not just something that verifies)."""
    ref = json.loads((VECTORS / "rfc6962_reference_tree.json").read_text())
    hashes = [merkle.leaf_hash(bytes.fromhex(x)) for x in ref["leaf_inputs_hex"]]
    seen = 0
    for path in _vector_files("inclusion"):
        v = json.loads(path.read_text())
        if path.stem == "happy-path" and v["treeSize"] <= len(hashes):
            want = [b64(p) for p in v["proof"] or []]
            assert merkle.inclusion_proof(hashes, v["leafIdx"], v["treeSize"]) == want
            seen += 1
    for path in _vector_files("consistency"):
        v = json.loads(path.read_text())
        if path.stem == "happy-path" and v["size2"] <= len(hashes):
            want = [b64(p) for p in v["proof"] or []]
            assert merkle.consistency_proof(hashes, v["size1"], v["size2"]) == want
            seen += 1
    assert seen >= 6


# --- agreement with the RFC's recursive definitions ---------------------------------------


def test_root_matches_rfc_definition() -> None:
    for n in range(0, 70):
        assert merkle.root(HASHES[:n]) == ref_mth(LEAVES[:n]), n


def test_inclusion_proofs_match_rfc_definition_exhaustively() -> None:
    for n in range(1, 40):
        for m in range(n):
            want = ref_path(m, LEAVES[:n])
            assert merkle.inclusion_proof(HASHES, m, n) == want, (m, n)
            merkle.verify_inclusion(HASHES[m], m, n, want, ref_mth(LEAVES[:n]))


def test_consistency_proofs_match_rfc_definition_exhaustively() -> None:
    for n in range(1, 40):
        for m in range(1, n + 1):
            want = ref_proof(m, LEAVES[:n])
            assert merkle.consistency_proof(HASHES, m, n) == want, (m, n)
            merkle.verify_consistency(m, n, want, ref_mth(LEAVES[:m]), ref_mth(LEAVES[:n]))


# --- properties on random trees up to 2000 leaves ----------------------------------------


@st.composite
def inclusion_case(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, len(HASHES)))
    return draw(st.integers(0, size - 1)), size


@st.composite
def consistency_case(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, len(HASHES)))
    return draw(st.integers(1, new)), new


@settings(max_examples=60, deadline=None)
@given(inclusion_case(), st.integers(1, 255))
def test_every_inclusion_proof_verifies_and_any_flip_fails(case: tuple[int, int], mask: int) -> None:
    index, size = case
    proof = merkle.inclusion_proof(HASHES, index, size)
    root = merkle.root(HASHES[:size])
    merkle.verify_inclusion(HASHES[index], index, size, proof, root)
    assert merkle.root_from_inclusion(HASHES[index], index, size, proof) == root
    for j in range(len(proof)):
        for pos in range(merkle.HASH_SIZE):
            bad = [*proof[:j], flip(proof[j], pos, mask), *proof[j + 1 :]]
            with pytest.raises(ProofError) as exc:
                merkle.verify_inclusion(HASHES[index], index, size, bad, root)
            assert exc.value.check == "root_mismatch"
    for pos in range(merkle.HASH_SIZE):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(HASHES[index], index, size, proof, flip(root, pos, mask))
        with pytest.raises(ProofError):
            merkle.verify_inclusion(flip(HASHES[index], pos, mask), index, size, proof, root)


@settings(max_examples=60, deadline=None)
@given(consistency_case(), st.integers(1, 255))
def test_every_consistency_proof_verifies_and_any_flip_fails(case: tuple[int, int], mask: int) -> None:
    old, new = case
    proof = merkle.consistency_proof(HASHES, old, new)
    old_root, new_root = merkle.root(HASHES[:old]), merkle.root(HASHES[:new])
    merkle.verify_consistency(old, new, proof, old_root, new_root)
    for j in range(len(proof)):
        for pos in range(merkle.HASH_SIZE):
            bad = [*proof[:j], flip(proof[j], pos, mask), *proof[j + 1 :]]
            with pytest.raises(ProofError):
                merkle.verify_consistency(old, new, bad, old_root, new_root)
    for pos in range(merkle.HASH_SIZE):
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, proof, flip(old_root, pos, mask), new_root)
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, proof, old_root, flip(new_root, pos, mask))


@settings(max_examples=60, deadline=None)
@given(inclusion_case())
def test_inclusion_proof_is_bound_to_index_and_size(case: tuple[int, int]) -> None:
    index, size = case
    proof = merkle.inclusion_proof(HASHES, index, size)
    root = merkle.root(HASHES[:size])
    # (A different *size* can share the path's shape, e.g. leaf 0 of 3 and of 4; the root
    # then tells the trees apart, so only the index is tested here.)
    for other in (index - 1, index + 1):
        if 0 <= other < size:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(HASHES[index], other, size, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(HASHES[index], index, size, [*proof, root], root)
    if proof:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(HASHES[index], index, size, proof[:-1], root)


@settings(max_examples=60, deadline=None)
@given(consistency_case(), st.data())
def test_consistency_proof_rejects_a_forked_log(case: tuple[int, int], data: st.DataObject) -> None:
    """The point of invariant 6: a log that rewrote any of the first `old` leaves cannot
    prove consistency with a checkpoint taken before the rewrite."""
    old, new = case
    forked = list(HASHES[:new])
    victim = data.draw(st.integers(0, old - 1))
    forked[victim] = merkle.leaf_hash(b"rewritten history")
    proof = merkle.consistency_proof(forked, old, new)
    with pytest.raises(ProofError):
        merkle.verify_consistency(old, new, proof, merkle.root(HASHES[:old]), merkle.root(forked))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 5000))
def test_compact_range_tracks_the_root(n: int) -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    cr = merkle.CompactRange()
    completed = []
    for h in leaves:
        completed.extend(cr.append(h))
    assert cr.size == n
    assert cr.root() == merkle.root(leaves)
    # Every completed node is the complete subtree it claims to be, and none is missing.
    for level, idx, h in completed:
        assert h == merkle.root(leaves[idx << level : (idx + 1) << level])
    assert len(completed) == sum(n >> level for level in range(1, n.bit_length() + 1))
    # A range restarted from its edge hashes continues identically.
    again = merkle.CompactRange(n, cr.subtree_hashes())
    extra = merkle.leaf_hash(b"next")
    assert again.append(extra) == cr.copy().append(extra)


# --- errors name the failed check --------------------------------------------------------


def test_inclusion_errors_name_the_check() -> None:
    root = merkle.root(HASHES[:8])
    proof = merkle.inclusion_proof(HASHES, 3, 8)
    cases = {
        "index_out_of_range": (HASHES[3], 8, 8, proof, root),
        "proof_length": (HASHES[3], 3, 8, proof[:-1], root),
        "hash_length": (HASHES[3], 3, 8, [*proof[:-1], b"short"], root),
        "root_mismatch": (HASHES[4], 3, 8, proof, root),
    }
    for check, args in cases.items():
        with pytest.raises(ProofError) as exc:
            merkle.verify_inclusion(*args)
        assert exc.value.check == check
        assert exc.value.code == "invalid_proof"
    with pytest.raises(ProofError, match="needs 3"):
        merkle.verify_inclusion(HASHES[3], 3, 8, [*proof, proof[0]], root)


def test_consistency_edge_cases() -> None:
    r5 = merkle.root(HASHES[:5])
    merkle.verify_consistency(5, 5, [], r5, r5)
    merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, r5)
    with pytest.raises(ProofError) as exc:
        merkle.verify_consistency(0, 5, [], r5, r5)
    assert exc.value.check == "root_mismatch"
    with pytest.raises(ProofError) as exc:
        merkle.verify_consistency(5, 5, [], r5, merkle.root(HASHES[:4]))
    assert exc.value.check == "root_mismatch"
    with pytest.raises(ProofError) as exc:
        merkle.verify_consistency(6, 5, [], r5, r5)
    assert exc.value.check == "size_order"
    with pytest.raises(ProofError) as exc:
        merkle.verify_consistency(3, 5, [], merkle.root(HASHES[:3]), r5)
    assert exc.value.check == "proof_length"


def test_generation_rejects_impossible_requests() -> None:
    with pytest.raises(OutOfRange):
        merkle.inclusion_proof(HASHES[:4], 4, 4)
    with pytest.raises(OutOfRange):
        merkle.inclusion_proof(HASHES[:4], 0, 5)
    with pytest.raises(OutOfRange):
        merkle.consistency_proof(HASHES[:4], 3, 2)
    with pytest.raises(OutOfRange):
        merkle.subtree_nodes(1, 3)  # [1, 3) is in no RFC tree
    assert merkle.subtree_nodes(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert merkle.subtree_nodes(8, 12) == [(2, 2)]
