"""Provider dispatch: `plan_for` (what `duet cvm create --plan` prints) and
`make_provider` (what the controller enables).

`plan_for` sends nothing and needs no credentials or cloud SDK: it returns the exact
requests (clouds) or command line and seed (qemu) a create would use, as JSON-ready data.
Values it cannot know without configuration (a subscription, the controller's address)
show as ``<name>`` placeholders and are listed under ``unresolved``.

``python -m duet.cvm.plan --provider azure --tee snp [--spec '{"location": ...}']`` prints
a plan (with a throw-away key and host_data unless given).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from duet.cvm.errors import ProvisioningFailed
from duet.cvm.provider import Provider

PROVIDERS = ("azure", "gcp", "qemu", "libvirt")

_AZURE_KEYS = ("subscription_id", "resource_group", "location", "controller_cidr", "subnet_id", "admin_user",
               "create_timeout_s", "poll_interval_s", "boot_timeout_s", "arm_endpoint", "authority_host", "ca_pem")
_GCP_KEYS = ("project", "zone", "network", "controller_cidr", "admin_user", "disk_size_gb", "create_timeout_s",
             "poll_interval_s", "boot_timeout_s", "api_endpoint")


def _pick(config: Mapping[str, object], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: config[k] for k in keys if k in config and config[k] is not None}


def make_provider(name: str, config: Mapping[str, object], *, credential: Any = None) -> Provider:
    """A provider from its configuration (the controller's per-provider settings).

    Credentials never come from `config`: `credential` is the SDK credential the owner
    sealed to the controller (`credentials.set`), else Azure uses DefaultAzureCredential
    (managed identity, environment, CLI login) and Google Cloud Application Default
    Credentials, each resolved on first use. Unknown keys are rejected so that a typo is
    not ignored.
    """
    if name == "azure":
        from duet.cvm.azure import AzureProvider
        from duet.cvm.clouds import azure_endpoints

        _check(name, config, _AZURE_KEYS)
        azure_endpoints.check(config)
        return AzureProvider(**_pick(config, _AZURE_KEYS), credential=credential)
    if name == "gcp":
        from duet.cvm.gcp import GcpProvider

        _check(name, config, _GCP_KEYS)
        return GcpProvider(**_pick(config, _GCP_KEYS), credentials=credential)
    if name == "qemu":
        from duet.cvm.qemu import QemuProvider, config_kwargs

        if "base_dir" not in config:
            raise ProvisioningFailed("qemu: config needs base_dir")
        kw = config_kwargs(config)
        _check(name, config, (*kw.keys(), "base_dir"))
        return QemuProvider(Path(str(config["base_dir"])), **kw)
    if name == "libvirt":
        from duet.cvm import libvirt

        return libvirt.make(config, credential)
    if name == "local":
        from duet.cvm.local import LocalProvider

        if "base_dir" not in config:
            raise ProvisioningFailed("local: config needs base_dir")
        return LocalProvider(Path(str(config["base_dir"])))
    raise ProvisioningFailed(f"unknown provider {name!r} (want one of local, {', '.join(PROVIDERS)})")


def _check(name: str, config: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ProvisioningFailed(f"{name}: unknown config keys: {', '.join(unknown)}")


def plan_for(
    provider_name: str,
    *,
    tee: str,
    spec: Mapping[str, object],
    authorized_key: str,
    cvm_id: str = "plan-0000",
    config: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The exact requests a create would send, without sending them (no credentials).

    `spec` is the owner's CVM spec; ``tee`` wins over ``spec["tee"]``. A missing
    ``host_data`` is filled with a random placeholder value (the controller draws the
    real one per CVM at create time) and the plan says so.
    """
    full: dict[str, object] = dict(spec)
    full["tee"] = tee
    notes: list[str] = []
    if "host_data" not in full:
        full["host_data"] = secrets.token_hex(32)
        notes.append("host_data is a random stand-in: the controller draws the real value per CVM at create time")
    cfg = dict(config or {})
    if provider_name == "azure":
        from duet.cvm.azure import AzureProvider

        plan = AzureProvider(**_pick(cfg, _AZURE_KEYS)).plan(cvm_id, authorized_key=authorized_key, spec=full)
    elif provider_name == "gcp":
        from duet.cvm.gcp import GcpProvider

        plan = GcpProvider(**_pick(cfg, _GCP_KEYS)).plan(cvm_id, authorized_key=authorized_key, spec=full)
    elif provider_name == "qemu":
        from duet.cvm.qemu import QemuProvider, config_kwargs

        base = Path(str(cfg.get("base_dir", "/var/lib/duet/qemu")))
        plan = QemuProvider(base, **config_kwargs(cfg)).plan(cvm_id, authorized_key=authorized_key, spec=full)
    elif provider_name == "libvirt":
        from duet.cvm import libvirt

        plan = libvirt.make({"uri": "qemu+tls://libvirt-host.invalid/system", **cfg}).plan(
            cvm_id, authorized_key=authorized_key, spec=full)
    else:
        raise ProvisioningFailed(f"no plan for provider {provider_name!r} (want one of {', '.join(PROVIDERS)})")
    if notes:
        earlier = plan.get("notes")
        plan["notes"] = [*(earlier if isinstance(earlier, list) else []), *notes]
    json.dumps(plan)  # must be JSON-serialisable
    return plan


def _throwaway_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.generate().public_key()
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m duet.cvm.plan", description="Print a CVM create plan (JSON).")
    ap.add_argument("--provider", required=True, choices=PROVIDERS)
    ap.add_argument("--tee", default="snp")
    ap.add_argument("--spec", default="{}", help="JSON object: the CVM spec")
    ap.add_argument("--config", default="{}", help="JSON object: the provider's configuration")
    ap.add_argument("--key", help="the controller's OpenSSH public key line (default: a throw-away one)")
    args = ap.parse_args(argv)
    try:
        spec = json.loads(args.spec)
        config = json.loads(args.config)
        plan = plan_for(args.provider, tee=args.tee, spec=spec, config=config,
                        authorized_key=args.key or _throwaway_key())
    except (ValueError, ProvisioningFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(json.dumps(plan, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
