"""``duet attestation verify``: check TEE evidence offline and print claims and a verdict.

Exit status (README, "Verifying evidence offline"):

* 0 — verified, and the expectations (if any) are met;
* 1 — an error of this tool (nothing was judged);
* 2 — usage error (the command line itself; typer's own code);
* 3 — verification failed: a signature, chain, TCB, binding or expectation does not hold;
* 4 — unusable input: a file is missing, malformed, of another kind, or the certificates
  or collateral it needs were not given.

Certificates in ``--certs DIR`` are found by content (:mod:`duet.attestation.certstore`),
never by file name. An Azure vTPM AK certificate is judged against the roots pinned in the
expectations (``cvm.azure_ak_roots``), never against a root found in ``--certs``; SEV-SNP
and TDX chains end at AMD's / Intel's roots, or at the ones the expectations pin instead
(``cvm.snp_arks``, ``cvm.tdx_roots``), never at a root found in ``--certs`` (bar the
development roots of the simulated kinds and ``--trust-simulated``).
``--expect`` takes the same YAML as ``duet verify --expect``: its ``controller:`` section
for SGX evidence, its ``cvm:`` section for everything else.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from duet.attestation import errors as E
from duet.attestation.azure.evidence import parse_azure_evidence, verify_azure_evidence
from duet.attestation.azure.maa import (
    MaaReport,
    parse_maa_evidence,
    verify_maa_signer_quote,
    verify_maa_token,
)
from duet.attestation.certstore import CertStore
from duet.attestation.cvm_kinds import under_one_of
from duet.attestation.dcap.verify import intel_sgx_root_ca_der, verify_sgx_quote, verify_tdx_quote
from duet.attestation.detect import KINDS, decode_text, detect_kind
from duet.attestation.snp.verify import verify_snp_report_with_certs
from duet.attestation.validate import Expectations, validate

app = typer.Typer(help="Verify TEE attestation evidence offline.", no_args_is_help=True)

EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INPUT = 0, 1, 3, 4

# Sections of the expectations file that describe a log, not a piece of evidence: this
# command cannot check them and says so rather than pretending.
_LOG_ONLY_CVM_FIELDS = ("mode", "max_evidence_age")


@app.callback()
def _group() -> None:
    """Verify TEE attestation evidence offline (no network)."""


class _Input(Exception):
    """Unusable input discovered by the CLI itself (missing file, bad option)."""

    def __init__(self, message: str, code: str = "unusable_input") -> None:
        super().__init__(message)
        self.code = code


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _Input(f"cannot read {path}: {e.strerror or e}") from None


def _first(d: Path | None, *names: str) -> bytes | None:
    if d is None:
        return None
    for n in names:
        p = d / n
        if p.is_file():
            return _read(p)
    return None


def _parse_now(now: str | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(now.replace("Z", "+00:00"))
    except ValueError:
        raise _Input(f"--now {now!r} is not ISO 8601") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _store(certs: Path | None) -> CertStore:
    if certs is None:
        return CertStore()
    if not certs.is_dir():
        raise _Input(f"--certs {certs} is not a directory")
    store = CertStore.from_dir(certs)
    # A simulated SNP platform directory keeps its VCEK inside its JSON state.
    for name in ("simulated-snp.json", "simulated-snp-guest.json"):
        raw = _first(certs, name)
        if raw is None:
            continue
        try:
            state = json.loads(raw)
        except ValueError:
            raise _Input(f"{name} is not JSON") from None
        if not isinstance(state, dict):
            continue
        for key, what in (("vcek_der", "VCEK"), ("ask_pem", "ASK"), ("ark_pem", "ARK")):
            value = state.get(key)
            if isinstance(value, str) and value:
                blob = bytes.fromhex(value) if key.endswith("_der") else value.encode()
                store.add(blob, f"{name} ({what})", strict=True)
    return store


def _dcap_root(store: CertStore, trust_simulated: bool) -> bytes | None:
    intel = intel_sgx_root_ca_der()
    others = [c for c in store.sgx_roots() if c.der != intel]
    if not others:
        return None
    if not trust_simulated:
        raise _Input(
            f"--certs holds a custom SGX root ({others[0].describe()}); "
            "pass --trust-simulated to trust it"
        )
    if len(others) > 1:
        raise _Input("--certs holds several custom SGX roots: " + "; ".join(
            c.describe() for c in others))
    return others[0].der


def _verify(
    kind: str,
    data: bytes,
    *,
    certs: Path | None,
    collateral: bytes | None,
    jwks: bytes | None,
    now: datetime,
    trust_simulated: bool,
    ak_roots: list[bytes] | None = None,
    pinned: PinnedRoots | None = None,
) -> Any:
    """`pinned`: the SEV-SNP / DCAP roots the expectations pin instead of AMD's / Intel's
    (`cvm.snp_arks`, `cvm.tdx_roots`), as `duet verify` uses them."""
    snp_arks, tdx_roots = pinned if pinned is not None else (None, None)
    if kind == "maa":
        if data.lstrip()[:1] == b"{":  # CVM evidence: the token with the JWKS logged beside it
            token, logged = parse_maa_evidence(data)
            data = token.encode()
            if jwks is None:
                jwks = json.dumps(logged).encode()
        if jwks is None:
            raise _Input(
                "MAA tokens need --jwks FILE: the MAA instance's signing keys (its /certs "
                "document), saved beside the token"
            )
        return verify_maa_token(data, jwks, now=now)
    store = _store(certs)
    if kind in ("sgx", "tdx"):
        if collateral is None:
            collateral = _first(certs, "collateral.json")
        if collateral is None:
            raise _Input(f"{kind} quotes need --collateral (dcap-qvl QuoteCollateralV3 JSON)")
        fn = verify_sgx_quote if kind == "sgx" else verify_tdx_quote
        quote, coll = decode_text(data), collateral
        if kind == "tdx" and tdx_roots is not None:
            return under_one_of(tdx_roots, lambda root: fn(quote, coll, now=now, root_ca_der=root))
        return fn(quote, coll, now=now, root_ca_der=_dcap_root(store, trust_simulated))
    if kind in ("snp", "simulated-snp"):
        trusted = snp_arks
        if kind == "simulated-snp" and snp_arks is None:
            arks = store.of("ark")
            if not arks:
                raise _Input("simulated-snp needs the development ARK in --certs")
            trusted = [a.der for a in arks]
        return verify_snp_report_with_certs(
            decode_text(data), store, now=now, trusted_arks=trusted
        )
    if kind == "azure":
        if data[:4] == b"HCLA":
            raise _Input("a bare HCL report cannot be verified: give the JSON evidence")
        evidence = parse_azure_evidence(data)

        def azure(root: bytes | None) -> Any:
            return verify_azure_evidence(
                evidence,
                now=now,
                certs=store,
                tdx_collateral=collateral,
                root_ca_der=root,
                ak_roots=ak_roots,
                trusted_arks=snp_arks,
            )

        if tdx_roots is not None and evidence.td_quote is not None:
            return under_one_of(tdx_roots, azure)
        return azure(_dcap_root(store, trust_simulated))
    raise _Input(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


#: (SEV-SNP roots, DCAP roots) pinned instead of AMD's / Intel's; None: the vendor's.
PinnedRoots = tuple[list[bytes] | None, list[bytes] | None]


def _pinned_roots(expectations: Expectations | None) -> PinnedRoots:
    """`cvm.snp_arks` / `cvm.tdx_roots` of the expectations (checked when they loaded)."""
    if expectations is None:
        return None, None
    from duet.attestation.pinned_roots import load_pinned

    arks, tdx = expectations.snp_arks, expectations.tdx_roots
    return (load_pinned("snp_arks", [p.encode() for p in arks]) if arks is not None else None,
            load_pinned("tdx_roots", [p.encode() for p in tdx]) if tdx is not None else None)


# -- expectations --------------------------------------------------------------------------


def _evidence_tee(report: Any) -> str:
    """The name a ``tee:`` expectation uses for this evidence."""
    kind = str(getattr(report, "kind", ""))
    simulated = bool(getattr(report, "simulated", False))
    if kind in ("snp", "tdx") and simulated:
        return f"simulated-{kind}"
    return kind


def _load_expectations(path: Path, kind: str) -> tuple[Expectations, str | None, list[str]]:
    """(claims expectations, expected tee, what this command does not check) from the
    same file ``duet verify --expect`` reads. Raises :class:`_Input` with the very line
    ``duet verify`` prints for a malformed file."""
    from duet.client.expectations import load_expectations
    from duet.client.http import ClientError

    try:
        user = load_expectations(path)
    except ClientError as exc:
        raise _Input(exc.message, exc.code) from None
    not_checked: list[str] = []
    section_name = "controller" if kind in ("sgx", "sgx-maa") else "cvm"
    tee: str | None
    if section_name == "controller":
        if user.controller is None:
            raise _Input(f"{path} has no controller: section (SGX evidence is checked against it)")
        exp = user.controller.evidence()
        tee = user.controller.tee
    else:
        if user.cvm is None:
            raise _Input(f"{path} has no cvm: section ({kind} evidence is checked against it)")
        exp = user.cvm.evidence()
        tee = user.cvm.tee
        for name in _LOG_ONLY_CVM_FIELDS:
            if getattr(user.cvm, name, None) is not None:
                not_checked.append(f"cvm.{name}")
    for other in type(user).model_fields:
        if other not in ("controller", "cvm") and getattr(user, other, None) is not None:
            not_checked.append(other)
    return exp, tee, not_checked


def _verify_maa_enclave(
    report: MaaReport, jwks: bytes, collateral: bytes, now: datetime, root: bytes | None
) -> MaaReport:
    sgx = verify_maa_signer_quote(jwks, report.kid, collateral, now=now, root_ca_der=root)
    verified = {
        "cert": 0,
        "verified": True,
        "mrenclave": sgx.mrenclave,
        "mrsigner": sgx.mrsigner,
        "isv_prod_id": sgx.isv_prod_id,
        "isv_svn": sgx.isv_svn,
        "debug": sgx.debug,
        "report_data": sgx.report_data.hex(),
        "names_kid": True,
        "tcb_status": sgx.tcb_status,
        "advisory_ids": list(sgx.advisory_ids),
        "simulated": sgx.simulated,
    }
    return replace(report, signer_quotes=[verified])


# -- output --------------------------------------------------------------------------------


def _caveats(report: Any) -> list[str]:
    """What passed, but with a condition the user should see on its own line."""
    out: list[str] = []
    hw = getattr(report, "hardware", None)
    target = hw if hw is not None else report
    if getattr(target, "debug", False):
        out.append(
            "DEBUG ENABLED: the host can read and change this TEE's memory; "
            "its measurements prove nothing about what runs in it"
        )
    status = getattr(target, "tcb_status", None)
    if isinstance(status, str) and status and status != "UpToDate":
        out.append(f"TCB status: {status}")
    for adv in getattr(target, "advisory_ids", None) or []:
        out.append(f"advisory: {adv}")
    if isinstance(report, MaaReport):
        out.append(
            f"trusted party: Microsoft Azure Attestation ({report.issuer}) verified the "
            "hardware evidence; only its token signature was checked here, with the key "
            f"{report.kid!r} (SPKI SHA-256 {report.signing_key_sha256}) from the JWKS given"
        )
        for q in report.signer_quotes:
            if not q.get("verified"):
                out.append(
                    "MAA enclave quote parsed, not verified (give --collateral and "
                    "cvm.maa_enclave expectations)"
                )
            else:
                if q.get("tcb_status") not in (None, "UpToDate"):
                    out.append(f"MAA enclave TCB status: {q.get('tcb_status')}")
                for adv in q.get("advisory_ids") or []:
                    out.append(f"MAA enclave advisory: {adv}")
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        if isinstance(v, dict) and k != "runtime_claims":
            out.extend(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.extend(_flatten(x, f"{prefix}{k}[{i}]."))
        elif isinstance(v, list):
            out.append((prefix + k, ", ".join(str(x) for x in v) or "-"))
        elif k == "runtime_claims":
            out.append((prefix + k, json.dumps(v, sort_keys=True)[:200]))
        else:
            out.append((prefix + k, "-" if v is None else str(v)))
    return out


@app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="evidence file (quote, report, Azure JSON, JWT)")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="sgx|tdx|snp|azure|simulated-snp|maa")
    ] = None,
    certs: Annotated[
        Path | None,
        typer.Option("--certs", help="directory of certificates (any names, PEM/DER, bundles)"),
    ] = None,
    collateral: Annotated[
        Path | None, typer.Option("--collateral", help="DCAP collateral JSON (dcap-qvl)")
    ] = None,
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="MAA signing keys (JWKS JSON) for --kind maa")
    ] = None,
    now: Annotated[str | None, typer.Option("--now", help="verification time, ISO 8601")] = None,
    expect: Annotated[
        Path | None, typer.Option("--expect", help="expectations YAML (as for duet verify)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    trust_simulated: Annotated[
        bool,
        typer.Option("--trust-simulated", help="UNSAFE: trust the development SGX root in --certs"),
    ] = False,
) -> None:
    """Verify FILE; print its claims, caveats and the verdict (exit 0/1/3/4, see README)."""
    result: dict[str, Any] = {"file": str(file)}
    code = EXIT_OK
    claims: dict[str, Any] = {}
    simulated = False
    caveats: list[str] = []
    not_checked: list[str] = []
    try:
        data = _read(file)
        k = kind or detect_kind(data)
        if k not in KINDS:
            raise _Input(f"unknown kind {k!r} (one of {', '.join(KINDS)})")
        result["kind"] = k
        coll = _read(collateral) if collateral else None
        jwks_raw = _read(jwks) if jwks else None
        at = _parse_now(now)
        expectations = None
        expected_tee = None
        if expect is not None:
            section_kind = "sgx" if k == "sgx" else k
            expectations, expected_tee, not_checked = _load_expectations(expect, section_kind)
        report = _verify(
            k,
            data,
            certs=certs,
            collateral=None if k == "maa" else coll,
            jwks=jwks_raw,
            now=at,
            trust_simulated=trust_simulated or k == "simulated-snp",
            ak_roots=[r.encode() for r in expectations.azure_ak_roots]
            if expectations is not None and expectations.azure_ak_roots is not None else None,
            pinned=_pinned_roots(expectations),
        )
        if isinstance(report, MaaReport) and coll is not None:
            if expectations is None or expectations.maa_enclave is None:
                raise _Input(
                    "--collateral with an MAA token verifies MAA's own enclave quote; that "
                    "needs expectations of that enclave (cvm.maa_enclave in --expect)"
                )
            assert jwks_raw is not None
            report = _verify_maa_enclave(
                report, jwks_raw, coll, at, _dcap_root(_store(certs), trust_simulated)
            )
        result["kind"] = getattr(report, "kind", k)
        claims = report.to_dict()
        simulated = bool(getattr(report, "simulated", False))
        caveats = _caveats(report)
        if simulated and expectations is not None and (expectations.snp_arks or expectations.tdx_roots):
            caveats.append("SIMULATED: the evidence may chain to a root pinned in cvm.snp_arks / cvm.tdx_roots "
                           "instead of AMD's / Intel's; such a root proves no vendor hardware")
        if isinstance(report, MaaReport) and jwks is None:
            caveats.append(
                "the JWKS came with the evidence (whoever produced it chose it): pin MAA's key "
                "with cvm.maa_signing_keys"
            )
        result["simulated"] = simulated
        result["claims"] = claims
        result["caveats"] = caveats
        if not_checked:
            result["not_checked"] = not_checked
        if expectations is not None:
            failures = validate(report, expectations, now=at)
            found_tee = _evidence_tee(report)
            if expected_tee is not None and expected_tee != found_tee:
                failures.insert(0, E.Failure("tee", found_tee, expected_tee))
            result["failures"] = [f.__dict__ for f in failures]
            if failures:
                raise E.ExpectationFailed(failures)
        result["verdict"] = "verified"
    except _Input as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": e.code, "message": str(e)}
    except E.ExpectationFailed as e:
        code = EXIT_FAILED
        result["verdict"] = "expectations not met"
        result["error"] = {"code": e.code, "message": e.message}
    except (E.ParseError, E.CollateralError) as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": e.code, "message": e.message}
    except E.AttestationError as e:
        code = EXIT_FAILED
        result["verdict"] = "verification failed"
        result["error"] = {"code": e.code, "message": e.message}
    except ValueError as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": "unusable_input", "message": " ".join(str(e).split())}
    except Exception as e:
        code = EXIT_ERROR
        result["verdict"] = "error"
        result["error"] = {"code": "internal_error", "message": f"{type(e).__name__}: {e}"}

    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    elif result.get("error", {}).get("code") == "invalid_expectations":
        # Word for word what `duet verify --expect` prints for the same file.
        sys.stderr.write(f"error [invalid_expectations]: {result['error']['message']}\n")
    else:
        tag = "[SIMULATED] " if simulated else ""
        lines = []
        debug = any(c.startswith("DEBUG ENABLED") for c in caveats)
        if debug:
            lines.append(f"{tag}!!! DEBUG ENABLED !!!")
        lines.append(f"{tag}kind: {result.get('kind', '?')}")
        lines += [f"{tag}{k}: {v}" for k, v in _flatten(claims)]
        for c in caveats:
            lines.append(f"{tag}CAVEAT {c}")
        for n in not_checked:
            lines.append(f"{tag}NOT CHECKED {n} (a property of the log: duet verify checks it)")
        for f in result.get("failures", []):
            lines.append(f"FAILED {f['field']}: found {f['found']}, expected {f['expected']}")
        verdict = str(result["verdict"]).upper()
        if code == EXIT_OK and caveats:
            verdict += f" WITH {len(caveats)} CAVEAT(S) (listed above)"
        if simulated and code == EXIT_OK:
            verdict += " (SIMULATED: development root, not real hardware)"
        if debug and code == EXIT_OK:
            verdict += " — DEBUG ENABLED"
        lines.append(f"{tag}verdict: {verdict}")
        if "error" in result:
            lines.append(f"error [{result['error']['code']}]: {result['error']['message']}")
        sys.stdout.write("\n".join(lines) + "\n")
    raise typer.Exit(code)
