"""``duet attestation verify``: check TEE evidence offline and print claims and a verdict.

Exit status: 0 verified (and expectations met), 2 signature / chain / TCB failure,
3 expectation failure, 4 unusable input.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from duet.attestation import errors as E
from duet.attestation.azure.evidence import parse_azure_evidence, verify_azure_evidence
from duet.attestation.dcap.verify import verify_sgx_quote, verify_tdx_quote
from duet.attestation.detect import KINDS, decode_text, detect_kind
from duet.attestation.snp.verify import verify_snp_report
from duet.attestation.validate import Expectations, validate

app = typer.Typer(help="Verify TEE attestation evidence offline.", no_args_is_help=True)

EXIT_OK, EXIT_VERIFY, EXIT_EXPECT, EXIT_INPUT = 0, 2, 3, 4


@app.callback()
def _group() -> None:
    """Verify TEE attestation evidence offline (no network)."""


class _Input(Exception):
    """Unusable input discovered by the CLI itself (missing file, bad option)."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _Input(f"cannot read {path}: {e}") from None


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


def _sim_snp_state(certs: Path | None) -> dict[str, Any] | None:
    for name in ("simulated-snp.json", "simulated-snp-guest.json"):
        raw = _first(certs, name)
        if raw is not None:
            try:
                state = json.loads(raw)
            except ValueError:
                raise _Input(f"{name} is not JSON") from None
            if isinstance(state, dict):
                return state
    return None


def _verify(
    kind: str,
    data: bytes,
    *,
    certs: Path | None,
    collateral: bytes | None,
    now: datetime,
    trust_simulated: bool,
) -> Any:
    if kind in ("sgx", "tdx"):
        if collateral is None:
            collateral = _first(certs, "collateral.json")
        if collateral is None:
            raise _Input(f"{kind} quotes need --collateral (dcap-qvl QuoteCollateralV3 JSON)")
        root = _first(certs, "sgx_root_ca.der", "root_ca.der")
        if root is not None and not trust_simulated:
            raise _Input("--certs holds a custom SGX root; pass --trust-simulated to trust it")
        fn = verify_sgx_quote if kind == "sgx" else verify_tdx_quote
        return fn(decode_text(data), collateral, now=now, root_ca_der=root)
    if kind in ("snp", "simulated-snp"):
        sim = _sim_snp_state(certs)
        vcek = _first(certs, "vcek.der", "vcek.pem", "vcek.crt", "vcek.cer")
        ask = _first(certs, "cert_chain.pem", "cert_chain", "ask.pem")
        ark = _first(certs, "ark.pem", "snp_ark.pem")
        if sim is not None:
            vcek = vcek or bytes.fromhex(str(sim.get("vcek_der", "")))
            ask = ask or str(sim.get("ask_pem", "")).encode()
            ark = ark or str(sim.get("ark_pem", "")).encode()
        if vcek is None:
            raise _Input("SNP reports need the VCEK: put vcek.der (or vcek.pem) in --certs DIR")
        trusted = None
        if kind == "simulated-snp":
            if ark is None:
                raise _Input("simulated-snp needs the development ARK (ark.pem) in --certs")
            trusted = [ark]
        return verify_snp_report(
            decode_text(data),
            vcek_der=vcek,
            ask_pem=ask,
            ark_pem=ark,
            now=now,
            trusted_arks=trusted,
            crl_der=_first(certs, "crl.der", "crl.pem", "ark.crl"),
        )
    if kind == "azure":
        if data[:4] == b"HCLA":
            raise _Input("a bare HCL report cannot be verified: give the JSON evidence")
        return verify_azure_evidence(
            parse_azure_evidence(data),
            now=now,
            vcek_der=_first(certs, "vcek.der", "vcek.pem"),
            ask_pem=_first(certs, "cert_chain.pem", "cert_chain", "ask.pem"),
            ark_pem=_first(certs, "ark.pem"),
            crl_der=_first(certs, "crl.der", "crl.pem"),
            tdx_collateral=collateral,
        )
    raise _Input(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        if isinstance(v, dict) and k != "runtime_claims":
            out.extend(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out.append((prefix + k, ", ".join(str(x) for x in v) or "-"))
        elif k == "runtime_claims":
            out.append((prefix + k, json.dumps(v, sort_keys=True)[:200]))
        else:
            out.append((prefix + k, "-" if v is None else str(v)))
    return out


@app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="evidence file (quote, report, Azure JSON)")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="sgx|tdx|snp|azure|simulated-snp")
    ] = None,
    certs: Annotated[
        Path | None, typer.Option("--certs", help="directory with VCEK / ASK / ARK / roots")
    ] = None,
    collateral: Annotated[
        Path | None, typer.Option("--collateral", help="DCAP collateral JSON (dcap-qvl)")
    ] = None,
    now: Annotated[str | None, typer.Option("--now", help="verification time, ISO 8601")] = None,
    expect: Annotated[Path | None, typer.Option("--expect", help="expectations YAML")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    trust_simulated: Annotated[
        bool,
        typer.Option("--trust-simulated", help="UNSAFE: trust the development SGX root in --certs"),
    ] = False,
) -> None:
    """Verify FILE; print its claims and the verdict."""
    result: dict[str, Any] = {"file": str(file)}
    code = EXIT_OK
    claims: dict[str, Any] = {}
    simulated = False
    try:
        data = _read(file)
        k = kind or detect_kind(data)
        if k not in KINDS:
            raise _Input(f"unknown kind {k!r} (one of {', '.join(KINDS)})")
        result["kind"] = k
        coll = _read(collateral) if collateral else None
        expectations = Expectations.load(expect) if expect else None
        report = _verify(
            k,
            data,
            certs=certs,
            collateral=coll,
            now=_parse_now(now),
            trust_simulated=trust_simulated or k == "simulated-snp",
        )
        claims = report.to_dict()
        simulated = bool(getattr(report, "simulated", False))
        result["simulated"] = simulated
        result["claims"] = claims
        if expectations is not None:
            failures = validate(report, expectations)
            result["failures"] = [f.__dict__ for f in failures]
            if failures:
                raise E.ExpectationFailed(failures)
        result["verdict"] = "verified"
    except _Input as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": "unusable_input", "message": str(e)}
    except E.ExpectationFailed as e:
        code = EXIT_EXPECT
        result["verdict"] = "expectations not met"
        result["error"] = {"code": e.code, "message": e.message}
    except (E.ParseError, E.CollateralError) as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": e.code, "message": e.message}
    except E.AttestationError as e:
        code = EXIT_VERIFY
        result["verdict"] = "verification failed"
        result["error"] = {"code": e.code, "message": e.message}
    except ValueError as e:
        code = EXIT_INPUT
        result["verdict"] = "unusable input"
        result["error"] = {"code": "unusable_input", "message": str(e)}

    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        tag = "[SIMULATED] " if simulated else ""
        lines = [f"{tag}kind: {result.get('kind', '?')}"]
        lines += [f"{tag}{k}: {v}" for k, v in _flatten(claims)]
        for f in result.get("failures", []):
            lines.append(f"FAILED {f['field']}: found {f['found']}, expected {f['expected']}")
        verdict = str(result["verdict"]).upper()
        if simulated and code == EXIT_OK:
            verdict += " (SIMULATED: development root, not real hardware)"
        lines.append(f"{tag}verdict: {verdict}")
        if "error" in result:
            lines.append(f"error [{result['error']['code']}]: {result['error']['message']}")
        sys.stdout.write("\n".join(lines) + "\n")
    raise typer.Exit(code)
