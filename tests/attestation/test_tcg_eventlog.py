"""The vTPM's TCG event log (attestation/tcg_eventlog.py): the crypto-agile format, its replay
to SHA-256 PCRs, the events it names, and its bounds. The logs are built here (SIMULATED
boots); the swtpm twin (tests/providers/test_azure_vtpm_twin.py) replays one against a
real TPM's quote."""

from __future__ import annotations

import hashlib
import random

import pytest

from duet.attestation import tcg_eventlog as T
from duet.attestation.errors import AttestationError, BindingError, ParseError, UnsupportedVersion

KERNEL = b"SIMULATED kernel"
CMDLINE = "root=/dev/sda1 ro quiet"
BOOT = [
    (0, 0x8, b"SIMULATED CRTM"),
    *((pcr, T.EV_SEPARATOR, bytes(4)) for pcr in range(8)),
    (4, T.EV_EFI_BOOT_SERVICES_APPLICATION, b"SIMULATED shim"),
    (4, T.EV_EFI_BOOT_SERVICES_APPLICATION, KERNEL),
    (8, T.EV_IPL, b"grub_cmd: linux /vmlinuz\0"),
    (8, T.EV_IPL, f"kernel_cmdline: {CMDLINE}".encode() + b"\0"),
]


def _extend(events: list[tuple[int, int, bytes]], start0: bytes = bytes(32)) -> dict[int, bytes]:
    """What a TPM holds after these extends: written out independently of the module."""
    pcrs: dict[int, bytes] = {}
    for pcr, _, data in events:
        before = pcrs.get(pcr, start0 if pcr == 0 else bytes(32))
        pcrs[pcr] = hashlib.sha256(before + hashlib.sha256(data).digest()).digest()
    return pcrs


def _quoted(events: list[tuple[int, int, bytes]], start0: bytes = bytes(32)) -> dict[int, str]:
    out = {i: bytes(32).hex() for i in range(24)}
    out.update({k: v.hex() for k, v in _extend(events, start0).items()})
    return out


def test_the_replay_ends_at_the_quoted_pcrs_and_names_kernel_and_cmdline() -> None:
    claims = T.event_log_claims(T.build_tcg2_log(BOOT), _quoted(BOOT))
    assert claims["events"] == len(BOOT) and claims["pcrs"] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert claims["kernel"] == {"pcr": 4, "digest": hashlib.sha256(KERNEL).hexdigest()}
    assert claims["cmdline"] == {"pcr": 8, "digest": hashlib.sha256(f"kernel_cmdline: {CMDLINE}".encode()
                                                                    + b"\0").hexdigest(),
                                 "text": CMDLINE, "measured": True}


def test_a_startup_locality_event_sets_pcr0s_start() -> None:
    log = T.build_tcg2_log(BOOT, startup_locality=3)
    assert T.check_pcrs(log, _quoted(BOOT, bytes(31) + b"\x03"))
    with pytest.raises(BindingError, match="PCR 0"):
        T.check_pcrs(log, _quoted(BOOT))


def test_a_changed_or_missing_event_fails_naming_the_pcr() -> None:
    quoted = _quoted(BOOT)
    changed = [(p, t, d.replace(b"quiet", b"init=/bin/sh")) for p, t, d in BOOT]
    with pytest.raises(BindingError, match="PCR 8: the event log replays to"):
        T.check_pcrs(T.build_tcg2_log(changed), quoted)
    with pytest.raises(BindingError, match="PCR 4"):
        T.check_pcrs(T.build_tcg2_log([e for e in BOOT if e[2] != b"SIMULATED shim"]), quoted)
    # A changed digest byte (the data left as it was).
    raw = bytearray(T.build_tcg2_log(BOOT))
    at = bytes(raw).index(hashlib.sha256(KERNEL).digest())
    raw[at] ^= 1
    with pytest.raises(BindingError, match="PCR 4"):
        T.check_pcrs(bytes(raw), quoted)
    # An extra event, and a log extending a PCR the quote does not cover.
    with pytest.raises(BindingError, match="PCR 4"):
        T.check_pcrs(T.build_tcg2_log([*BOOT, (4, T.EV_EFI_BOOT_SERVICES_APPLICATION, b"more")]), quoted)
    with pytest.raises(BindingError, match="PCR 8: the event log extends it, but the vTPM quote does not cover it"):
        T.check_pcrs(T.build_tcg2_log(BOOT), {k: v for k, v in quoted.items() if k != 8})


def test_event_text_that_is_not_its_digest_is_not_believed() -> None:
    """The replay binds digests, not event data: data changed under the same digest
    replays, and the command line is then marked not measured."""
    raw = T.build_tcg2_log(BOOT).replace(b"ro quiet", b"rw quiet")
    claims = T.event_log_claims(raw, _quoted(BOOT))
    assert claims["cmdline"]["text"] == "root=/dev/sda1 rw quiet"  # type: ignore[index]
    assert claims["cmdline"]["measured"] is False  # type: ignore[index]


def test_a_log_with_several_banks_is_read_by_its_spec_id_sizes() -> None:
    spec = (T.SPEC_ID_SIGNATURE + bytes(4) + bytes([0, 2, 0, 2]) + (2).to_bytes(4, "little")
            + T.ALG_SHA1.to_bytes(2, "little") + (20).to_bytes(2, "little")
            + T.ALG_SHA256.to_bytes(2, "little") + (32).to_bytes(2, "little") + b"\0")
    log = bytearray((0).to_bytes(4, "little") + T.EV_NO_ACTION.to_bytes(4, "little") + bytes(20)
                    + len(spec).to_bytes(4, "little") + spec)
    for pcr, etype, data in BOOT:
        log += pcr.to_bytes(4, "little") + etype.to_bytes(4, "little") + (2).to_bytes(4, "little")
        log += T.ALG_SHA1.to_bytes(2, "little") + hashlib.sha1(data).digest()
        log += T.ALG_SHA256.to_bytes(2, "little") + hashlib.sha256(data).digest()
        log += len(data).to_bytes(4, "little") + data
    assert T.event_log_claims(bytes(log), _quoted(BOOT))["events"] == len(BOOT)


def test_malformed_logs_give_typed_errors() -> None:
    good = T.build_tcg2_log(BOOT)
    with pytest.raises(UnsupportedVersion, match="crypto-agile"):
        T.parse_tcg2_log(good.replace(T.SPEC_ID_SIGNATURE, b"Spec ID Event00\0"))
    with pytest.raises(ParseError, match="trunc"):
        T.parse_tcg2_log(good[:-3])
    with pytest.raises(ParseError, match="trunc"):
        T.parse_tcg2_log(good + b"\0\0")  # nothing may follow the last event
    with pytest.raises(ParseError, match="PCR index"):
        T.parse_tcg2_log(good + (24).to_bytes(4, "little") + bytes(40))
    huge = (4).to_bytes(4, "little") + (1).to_bytes(4, "little") + (1).to_bytes(4, "little") \
        + T.ALG_SHA256.to_bytes(2, "little") + bytes(32) + (0xFFFFFFFF).to_bytes(4, "little")
    with pytest.raises(ParseError, match="trunc"):
        T.parse_tcg2_log(good + huge)
    with pytest.raises(ParseError, match="more than"):
        T.parse_tcg2_log(good + bytes(T.MAX_LOG_BYTES))


def test_the_event_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "MAX_EVENTS", 5)
    with pytest.raises(ParseError, match="more than 5 events"):
        T.parse_tcg2_log(T.build_tcg2_log(BOOT))


def test_fuzzed_logs_parse_or_fail_with_a_typed_error() -> None:
    """Every truncation, and a few thousand seeded random mutations, of a real-shaped log:
    each either parses (and replays to something) or raises an AttestationError, never any
    other exception."""
    good = T.build_tcg2_log(BOOT)
    rng = random.Random(14)
    cases = [good[:n] for n in range(len(good))]
    for _ in range(3000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(b))
            if op < 0.6:
                b[i] = rng.randrange(256)
            elif op < 0.8:
                del b[i:i + rng.randint(1, 16)]
            else:
                b[i:i] = rng.randbytes(rng.randint(1, 16))
        cases.append(bytes(b))
    cases += [rng.randbytes(rng.randint(0, 200)) for _ in range(500)]
    outcomes = {"parsed": 0, "refused": 0}
    for case in cases:
        try:
            T.check_pcrs(case, _quoted(BOOT))
            outcomes["parsed"] += 1
        except AttestationError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 3000 and outcomes["parsed"] >= 0


def test_expect_init_pins_a_vtpm_event_log() -> None:
    """`duet expect init` pins what an Azure result's replayed vTPM log names (the log is on
    the Azure result, beside its hardware report)."""
    from types import SimpleNamespace

    from duet.cli.expect_init import build

    claims = T.event_log_claims(T.build_tcg2_log(BOOT), _quoted(BOOT))
    report = SimpleNamespace(state=SimpleNamespace(evidence_kind="azure-snp", mode="in-update"), checks=[],
                             controller={}, owner_keys=[])
    evidence = SimpleNamespace(hardware=SimpleNamespace(measurement="ab" * 48, event_log=None), event_log=claims)
    doc, _ = build(report, [{"type": "genesis"}], evidence)
    assert doc["cvm"]["require_event_log"] is True and doc["cvm"]["kernel_cmdline"] == CMDLINE
    assert doc["cvm"]["kernel_digest"] == hashlib.sha256(KERNEL).hexdigest()
