"""Which providers the controller drives, with which settings and credentials: decided by
signed owner intents in the controller log, never by the host.

Under `--tee gramine` the command line is fixed by the measured manifest, so nothing about
the clouds can come from it; and the host's argv would be untrusted input anyway. So:
- `providers.set` (an owner intent, logged in the controller log with a `providers`
  entry) names the providers and their non-secret settings. Outside an enclave,
  `--providers FILE` seeds the same setting (a bare `providers` entry, logged) for
  development; under `--tee gramine` the flag is refused.
- `credentials.set` carries cloud credentials HPKE-sealed to the controller
  (`ledger/credentials.py`): the sealed bytes travel beside the intent, the controller
  opens them inside, keeps them in its sealed state, and logs only the provider, the
  recipient key, the ciphertext digest and a keyed MAC (`credentials` entry).
- The `local` provider runs CVMs as processes on the controller's own host (sshd,
  `useradd`): it exists only outside an enclave, and no setting can enable it.

The same module re-reads each cloud CVM's control plane periodically
(`control_plane_recheck_s`): the owner, or the host holding the cloud's workload token,
can open a door in the cloud API between two entries into in-service.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from duet.controller import errors
from duet.controller.evidence import EvidenceCollector
from duet.controller.state import StateStore, Status
from duet.cvm.errors import CvmError
from duet.cvm.provider import Provider
from duet.ledger import credentials as sealing
from duet.ledger import entries
from duet.ledger.backend import LogStore
from duet.ledger.intent import Intent
from duet.ledger.operations import RECHECK_MAX_S, RECHECK_MIN_S

if TYPE_CHECKING:
    from duet.controller.service import Controller

log = logging.getLogger("duet.controller")

CONTROLLER_LOG = "controller"
DEFAULT_RECHECK_S = 900
LOCAL_REFUSED = ("the local provider runs CVMs as processes on the controller's own host (its sshd, useradd); "
                 "inside an SGX enclave it cannot work and is never offered, and outside one it needs no "
                 "settings (it is always enabled)")
GRAMINE_FLAG_REFUSED = ("--providers is refused under --tee gramine: the manifest fixes the command line and the "
                        "host's input is not trusted; set providers with a signed intent "
                        "(duet controller providers set FILE)")
#: Settings that point a provider's cloud API elsewhere than the public cloud: refused
#: under --tee gramine. The control-plane check reads each VM's model from that API; an
#: endpoint the owner names could answer for it and hide a door the owner opened in the
#: real one. (A PCCS is another matter: the collateral it serves is signed by Intel.)
ENCLAVE_REFUSED_SETTINGS: dict[str, tuple[str, ...]] = {
    "azure": ("arm_endpoint", "authority_host", "ca_pem"),
    "gcp": ("api_endpoint",),
}
#: Refused under --tee gramine for every provider: roots other than the vendors' for the
#: CVMs' evidence (`roots_setting`), each with the vendor whose roots it replaces.
ENCLAVE_REFUSED_ROOTS: dict[str, str] = {"snp_arks": "AMD's", "tdx_roots": "Intel's"}
#: Providers that take credentials, and the fields of each credentials file.
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "azure": ("tenant_id", "client_id", "client_secret"),
    "gcp": ("type", "client_email", "private_key", "token_uri"),
    # libvirt's TLS client material (PEM), for qemu+tls:// (duet.cvm.libvirt).
    "libvirt": ("ca_cert", "client_cert", "client_key"),
}

#: (name, settings, credential or None) -> the provider and its evidence collector.
Builder = Callable[[str, Mapping[str, object], Any], tuple[Provider, EvidenceCollector]]
#: (provider name, parsed credentials file) -> the SDK credential object.
CredentialMaker = Callable[[str, Mapping[str, str]], Any]


def digest(settings: Mapping[str, object]) -> str:
    return hashlib.sha256(rfc8785.dumps(dict(settings))).hexdigest()  # type: ignore[arg-type]


def logged_settings(ledger: LogStore) -> tuple[tuple[dict[str, dict[str, object]], int | None] | None, dict[str, str]]:
    """From one pass over the controller log: the newest `providers` entry (settings,
    recheck interval; None: none yet), and the newest `credentials` MAC per provider."""
    if not ledger.has_log(CONTROLLER_LOG):
        return None, {}
    size = ledger.tree_head(CONTROLLER_LOG).size
    providers = None
    macs: dict[str, str] = {}
    for leaf in ledger.leaves(CONTROLLER_LOG, 0, size) if size else []:
        e = entries.decode(leaf)
        if e["type"] == "providers":
            settings = e["providers"]
            assert isinstance(settings, dict)
            recheck = e.get("control_plane_recheck_s")
            providers = ({str(k): dict(v) for k, v in settings.items()}, recheck if isinstance(recheck, int) else None)
        elif e["type"] == "credentials":
            macs[str(e["provider"])] = str(e["credentials_mac"])
    return providers, macs


class StaleCredentials(Exception):
    """The sealed state's credentials are not the ones the controller log last recorded."""


def default_builder(pccs_url: str) -> Builder:
    """Providers from `duet.cvm.plan.make_provider`, each with the remote collector (TDX
    collateral from the PCCS or Intel's PCS, control plane through the provider's reader)."""

    def build(name: str, settings: Mapping[str, object], credential: Any) -> tuple[Provider, EvidenceCollector]:
        from duet.controller.evidence_remote import RemoteEvidence
        from duet.cvm.plan import make_provider
        from duet.tee.gramine import pccs_collateral

        config = dict(settings)
        maa_url, maa_jwks = maa_settings(name, config)
        pccs = pccs_setting(name, config) or pccs_url
        arks, tdx_roots = roots_setting(name, config, "snp_arks"), roots_setting(name, config, "tdx_roots")
        provider = make_provider(name, config, credential=credential)
        return provider, RemoteEvidence(tdx_collateral=pccs_collateral(pccs), trusted_arks=arks,
                                        trusted_tdx_roots=tdx_roots,
                                        inspector=getattr(provider, "inspect", None),
                                        maa_url=maa_url, maa_jwks=maa_jwks)

    return build


def pccs_setting(name: str, config: dict[str, object]) -> str | None:
    """`pccs_url` of a provider, taken out of its settings: where the controller fetches
    the DCAP collateral (TCB info, QE identity, CRLs) of this provider's TDX quotes, a
    PCCS or Intel's PCS (`https://api.trustedservices.intel.com`, the default). Set by
    intent, so it stands in the controller log; it decides availability only: the
    collateral is signed by Intel and checked against Intel's root, and it is logged
    beside each quote, where every user checks it again."""
    url = config.pop("pccs_url", None)
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(str(url)) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise CvmError(f"provider {name}: pccs_url must be an http(s) URL with a host and no query "
                       "(e.g. https://pccs.example.org:8081)")
    return str(url).rstrip("/")


def roots_setting(name: str, config: dict[str, object], key: str) -> list[bytes] | None:
    """`snp_arks` / `tdx_roots` of a provider, taken out of its settings: root certificates
    (PEM) the controller trusts for this provider's CVM evidence *instead of* the vendor's
    (AMD's ARKs for SEV-SNP reports; Intel's DCAP root for TDX quotes, `azure-tdx`'s
    included), for a twin whose evidence a development root signs, or a private root.
    Refused under `--tee gramine` (`_enclave_check`): there the controller's judgement of a
    CVM's hardware must rest on the vendors' roots alone. Evidence under such a root is
    SIMULATED in the controller's report of it, and a user who pins only the vendors' roots
    refuses it."""
    pems = config.pop(key, None)
    if pems is None:
        return None
    if not isinstance(pems, list) or not pems or not all(isinstance(a, str) for a in pems):
        raise CvmError(f"provider {name}: {key} must be a non-empty list of PEM certificates")
    from duet.attestation.errors import AttestationError
    from duet.attestation.pinned_roots import load_pinned

    try:
        return load_pinned(key, [p.encode() for p in pems])
    except AttestationError as exc:
        raise CvmError(f"provider {name}: {exc}") from None


def maa_settings(name: str, config: dict[str, object]) -> tuple[str | None, dict[str, Any] | None]:
    """`maa_url` and `maa_jwks` (the MAA instance's signing keys as a JWKS object, as the
    owner saved them from its `/certs`) of a provider, taken out of its settings: the MAA
    kinds need both, and the controller checks tokens against these keys only. They are
    public, so they travel in `providers.set` and stand in the controller log."""
    url, jwks = config.pop("maa_url", None), config.pop("maa_jwks", None)
    if url is None and jwks is None:
        return None, None
    if url is None or jwks is None:
        raise CvmError(f"provider {name}: maa_url and maa_jwks go together")
    from duet.attestation.azure.maa import load_jwks
    from duet.attestation.errors import AttestationError
    from duet.cvm.guest.collect import maa_url as checked_maa_url

    if not isinstance(jwks, dict):
        raise CvmError(f"provider {name}: maa_jwks must be a JWKS object (the keys themselves)")
    try:
        checked = checked_maa_url(str(url))
        load_jwks(jwks)
    except (ValueError, AttestationError) as exc:
        raise CvmError(f"provider {name}: MAA settings: {exc}") from None
    return checked, jwks


def sdk_credential(provider: str, fields: Mapping[str, str]) -> Any:
    """The cloud SDK's credential object for a credentials file (never logged). For
    azure, `fields` may also hold the provider's non-secret endpoint settings
    (`authority_host`, `ca_pem`: `credential_fields`)."""
    if provider == "azure":
        from azure.identity import ClientSecretCredential

        from duet.cvm.clouds import azure_endpoints

        return ClientSecretCredential(fields["tenant_id"], fields["client_id"], fields["client_secret"],
                                      **azure_endpoints.credential_kwargs(fields))
    if provider == "gcp":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(fields), scopes=["https://www.googleapis.com/auth/cloud-platform"])
    if provider == "libvirt":
        from duet.cvm.libvirt import TlsCredentials

        return TlsCredentials.from_fields(fields)
    raise errors.InvalidRequest(f"provider {provider!r} takes no credentials")


def credential_fields(name: str, fields: Mapping[str, str], settings: Mapping[str, object]) -> dict[str, str]:
    """A credentials file's fields, plus the provider's settings that say where its
    credential is used (Azure's `authority_host` and `ca_pem`): not secret, from the
    providers intent being built, never from the sealed file."""
    extra = {k: v for k in ("authority_host", "ca_pem") if isinstance(v := settings.get(k), str)} \
        if name == "azure" else {}
    return {**fields, **extra}


def parse_credentials(provider: str, plaintext: bytes) -> dict[str, str]:
    """A credentials file's fields. Every message names fields, never a value."""
    wanted = CREDENTIAL_FIELDS.get(provider)
    if wanted is None:
        raise errors.InvalidRequest(
            f"provider {provider!r} takes no credentials (credentials exist for {', '.join(CREDENTIAL_FIELDS)})")
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise errors.InvalidRequest(f"the {provider} credentials file is not a JSON object") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise errors.InvalidRequest(f"the {provider} credentials file must be a JSON object of strings")
    missing = [f for f in wanted if not doc.get(f)]
    if missing:
        raise errors.InvalidRequest(f"the {provider} credentials file lacks {', '.join(missing)}")
    if provider in ("azure", "libvirt") and set(doc) != set(wanted):
        raise errors.InvalidRequest(f"the {provider} credentials file holds exactly {', '.join(wanted)}; "
                                    f"unknown fields: {', '.join(sorted(set(doc) - set(wanted)))}")
    if provider == "gcp" and doc["type"] != "service_account":
        raise errors.InvalidRequest("the gcp credentials file must be a service-account key (type service_account)")
    return doc


class ProviderSetup:
    """The providers in force, rebuilt from the controller log and the sealed credentials.

    `in_enclave`: under `--tee gramine` (no `local`, no `--providers`). `local`: the
    local provider and its collector, offered outside an enclave only. `builder` and
    `credential_maker` are the seams tests use to drive the real SDK clients against fake
    clouds (transport hooks) without changing the logged flow.
    """

    def __init__(
        self,
        state: StateStore,
        *,
        in_enclave: bool,
        local: tuple[Provider, EvidenceCollector] | None = None,
        builder: Builder | None = None,
        credential_maker: CredentialMaker = sdk_credential,
        pccs_url: str = "https://api.trustedservices.intel.com",
    ) -> None:
        if in_enclave and local is not None:
            raise errors.ConfigError(LOCAL_REFUSED)
        self.state = state
        self.in_enclave = in_enclave
        self.local = local
        self.builder = builder or default_builder(pccs_url)
        self.credential_maker = credential_maker
        self.settings: dict[str, dict[str, object]] = {}
        self.recheck_s: int = DEFAULT_RECHECK_S
        #: The newest credentials MAC per provider, as the controller log records it.
        self.logged_macs: dict[str, str] = {}
        self._ctl: Controller | None = None
        self._task: asyncio.Task[None] | None = None
        self._hpke = self._sealed_key("credentials_hpke_key", lambda: X25519PrivateKey.generate().private_bytes_raw())
        self._mac_key = self._sealed_key("credentials_mac_key", lambda: secrets.token_bytes(32))

    def _sealed_key(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A key of the credentials path, kept under K (controller/state.py: secret metas)."""
        raw = self.state.get_secret(name)
        if raw is None:
            raw = make()
            self.state.set_secret(name, raw)
        return raw

    @property
    def hpke_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._hpke)

    # ------------------------------------------------------------------ building

    def load(self, ledger: LogStore) -> tuple[dict[str, Provider], dict[str, EvidenceCollector]]:
        """The providers the controller log puts in force (at start-up)."""
        logged, self.logged_macs = logged_settings(ledger)
        if logged is not None:
            self.settings, recheck = logged
            self.recheck_s = recheck or DEFAULT_RECHECK_S
        return self.build(self.settings, strict=False)

    def build(self, settings: Mapping[str, Mapping[str, object]], override: tuple[str, Any] | None = None, *,
              strict: bool = True) -> tuple[dict[str, Provider], dict[str, EvidenceCollector]]:
        """Every provider of `settings`. `strict=False` (start-up): a logged provider that
        cannot be built here (e.g. its SDK is missing) is left out and said so, rather
        than keeping the controller from starting, which would leave no way to fix it."""
        providers: dict[str, Provider] = {}
        evidence: dict[str, EvidenceCollector] = {}
        if self.local is not None:
            providers["local"], evidence["local"] = self.local
        for name, config in settings.items():
            if name == "local":
                raise errors.InvalidRequest(LOCAL_REFUSED)
            try:
                if self.in_enclave and name == "libvirt":
                    from duet.cvm.libvirt import check_uri

                    check_uri(str(config.get("uri", "")), in_enclave=True)
                self._enclave_check(name, config)
                credential = override[1] if override is not None and override[0] == name else \
                    self._credential(name, config)
                providers[name], evidence[name] = self.builder(name, config, credential)
            except StaleCredentials as exc:
                if strict:
                    raise errors.InvalidRequest(str(exc)) from None
                log.error("provider %s is not enabled: %s", name, exc)
            except (CvmError, ImportError) as exc:
                if strict:
                    raise errors.InvalidRequest(f"provider {name}: {exc}") from None
                log.error("provider %s from the controller log is not enabled: %s", name, exc)
        return providers, evidence

    def _enclave_check(self, name: str, config: Mapping[str, object]) -> None:
        roots = sorted(k for k in ENCLAVE_REFUSED_ROOTS if k in config)
        if self.in_enclave and roots:
            vendors = " and ".join(ENCLAVE_REFUSED_ROOTS[k] for k in roots)
            raise CvmError(f"{', '.join(roots)} refused under --tee gramine: inside an enclave the controller "
                           f"judges a CVM's hardware evidence against {vendors} roots only (other roots are for "
                           "twins and tests, outside an enclave)")
        refused = sorted(k for k in ENCLAVE_REFUSED_SETTINGS.get(name, ()) if k in config)
        if self.in_enclave and refused:
            raise CvmError(f"{', '.join(refused)} refused under --tee gramine: the control-plane check reads the "
                           f"VM's model from the public cloud's API, and an endpoint named in the settings could "
                           "answer in its place (outside an enclave: twins, tests)")

    def _credential(self, name: str, settings: Mapping[str, object]) -> Any:
        """The provider's sealed credentials, only if they are the ones the controller log
        last recorded: a host that restores an older sealed state file alone (it can) must
        not bring back credentials the owner replaced. No logged credentials and none
        stored: the cloud's workload identity (managed identity, metadata server)."""
        raw = self.state.get_secret(f"credentials:{name}")
        expected = self.logged_macs.get(name)
        if raw is None and expected is None:
            return None
        if raw is None or expected is None or not hmac.compare_digest(
                sealing.mac(self._mac_key, name, raw), expected):
            raise StaleCredentials(
                f"the sealed state's credentials for {name} are not the ones the controller log last recorded "
                "(an older or foreign state file); send them again with credentials.set")
        try:
            return self.credential_maker(name, credential_fields(name, parse_credentials(name, raw), settings))
        except Exception as exc:
            raise StaleCredentials(f"the stored credentials for {name} are unusable ({type(exc).__name__})") from None

    def bind(self, ctl: Controller) -> None:
        self._ctl = ctl

    @property
    def ctl(self) -> Controller:
        assert self._ctl is not None, "ProviderSetup.bind was not called"
        return self._ctl

    def _apply(self, built: tuple[dict[str, Provider], dict[str, EvidenceCollector]]) -> None:
        self.ctl.providers, self.ctl.evidence = built

    def info(self) -> dict[str, Any]:
        """What `/v1/controller` adds: the endorsed credentials key, the provider names."""
        return {
            "credentials_key": sealing.endorse(self.ctl.key, self.ctl.controller_id, self.hpke_key.public_key()),
            "providers": sorted(self.ctl.providers),
        }

    # ------------------------------------------------------------------ providers

    def seed(self, settings: Mapping[str, Mapping[str, object]]) -> None:
        """`--providers FILE` outside an enclave: the file is logged (a `providers` entry
        no intent authorised) when it differs from what the controller log holds."""
        if self.in_enclave:
            raise errors.ConfigError(GRAMINE_FLAG_REFUSED)
        plain = {str(k): dict(v) for k, v in settings.items()}
        if "local" in plain:
            raise errors.ConfigError(LOCAL_REFUSED)
        if plain == self.settings:
            return
        built = self.build(plain)
        self.ctl._append_controller([entries.ProvidersEntry(
            providers=plain, providers_sha256=digest(plain), control_plane_recheck_s=self.recheck_s)])
        self.settings = plain
        self._apply(built)

    async def set_providers(self, intent: Intent) -> dict[str, Any]:
        """Validate everything first (a refused intent changes nothing and is not logged,
        as for `owner.keys`), then log the intent and the `providers` entry, then switch.
        No await: two concurrent changes never interleave."""
        ctl = self.ctl
        new = {str(k): dict(v) for k, v in intent.args["providers"].items()}
        if "local" in new:
            raise errors.InvalidRequest(LOCAL_REFUSED)
        recheck = intent.args.get("control_plane_recheck_s")
        live = sorted({r.provider for r in ctl._records.values()
                       if r.status != Status.DELETED and r.provider != "local" and r.provider not in new})
        if live:
            raise errors.InvalidRequest(f"provider(s) {', '.join(live)} still own live CVMs: delete them first")
        built = self.build(new)
        ctl._still_authorised(intent)
        ctl._logging(intent)
        size = ctl.ledger.tree_head(CONTROLLER_LOG).size
        ctl._append_controller([
            entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size),
            entries.ProvidersEntry(providers=new, providers_sha256=digest(new), control_plane_recheck_s=recheck),
        ])
        self.settings = new
        self.recheck_s = recheck or DEFAULT_RECHECK_S
        self._apply(built)
        return {"providers": new, "providers_sha256": digest(new), "control_plane_recheck_s": self.recheck_s,
                "controller_log_size": size + 2}

    # ------------------------------------------------------------------ credentials

    async def set_credentials(self, intent: Intent, sealed: bytes | None) -> dict[str, Any]:
        """Open the sealed credentials inside, check them, log the change (never the
        secret, never the ciphertext), then keep them in the sealed state."""
        ctl = self.ctl
        args = intent.args
        name = str(args["provider"])
        if sealed is None:
            raise errors.InvalidRequest("credentials.set needs the sealed credentials beside the intent "
                                        '({"jws": ..., "sealed": base64})')
        if hashlib.sha256(sealed).hexdigest() != args["ciphertext_sha256"]:
            raise errors.InvalidRequest("the sealed credentials are not the ones the intent signed (digest differs)")
        mine = sealing.recipient_key_id(self.hpke_key.public_key())
        if args["recipient_key_id"] != mine:
            raise errors.InvalidRequest("the credentials were sealed to another credentials key than this controller's")
        if name not in self.settings:
            raise errors.UnknownProvider(f"provider {name!r} is not configured here; set it with providers.set first")
        plaintext = sealing.open_sealed(self.hpke_key, sealed, controller_id=ctl.controller_id, provider=name)
        fields = parse_credentials(name, plaintext)
        try:
            credential = self.credential_maker(name, credential_fields(name, fields, self.settings[name]))
        except errors.DuetError:
            raise
        except Exception as exc:
            # The SDK's own message may quote what it could not parse: name the type only.
            raise errors.InvalidRequest(f"the {name} SDK refused these credentials ({type(exc).__name__})") from None
        built = self.build(self.settings, override=(name, credential))
        ctl._still_authorised(intent)
        ctl._logging(intent)
        size = ctl.ledger.tree_head(CONTROLLER_LOG).size
        mac = sealing.mac(self._mac_key, name, plaintext)
        ctl._append_controller([
            entries.IntentEntry(jws=intent.jws, op=intent.op, kid=intent.kid, controller_log_size=size),
            entries.CredentialsEntry(provider=name, recipient_key_id=mine, ciphertext_sha256=args["ciphertext_sha256"],
                                     credentials_mac=mac),
        ])
        self.state.set_secret(f"credentials:{name}", plaintext)
        self.logged_macs[name] = mac
        self._apply(built)
        return {"provider": name, "credentials_mac": mac, "controller_log_size": size + 2}

    # ------------------------------------------------------------------ periodic re-check

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._recheck_loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _recheck_loop(self) -> None:
        while True:
            await asyncio.sleep(max(RECHECK_MIN_S, min(self.recheck_s, RECHECK_MAX_S)))
            try:
                await self.recheck_all()
            except Exception:  # never let the loop die; each CVM's outcome is logged
                log.exception("control-plane re-check failed")

    async def recheck_all(self) -> list[str]:
        """Read every ready cloud CVM's control plane again, under its lock; each outcome
        (facts and verdicts, or the failure to read them) goes into its log, where
        `duet verify` judges the newest. Returns the ids of CVMs whose check failed."""
        ctl = self.ctl
        failed = []
        for rec in list(ctl._records.values()):
            collector = ctl.evidence.get(rec.provider)
            if rec.status != Status.READY or collector is None or getattr(collector, "inspector", None) is None:
                continue
            async with ctl._lock(rec.id):
                if rec.status != Status.READY:
                    continue
                try:
                    await collector.control_plane(ctl.port(rec), purpose="recheck")  # type: ignore[attr-defined]
                except errors.DuetError as exc:
                    failed.append(rec.id)
                    log.warning("cvm %s: control-plane re-check failed: %s", rec.id, exc)
        return failed


def load_providers_file(text: str, path: str) -> dict[str, dict[str, object]]:
    """`--providers FILE` and `duet controller providers set FILE`: YAML mapping a provider
    name to its settings (no credentials)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"cannot read providers file {path}: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise errors.ConfigError(f"{path} must map provider names to their settings")
    if "local" in doc:
        raise errors.ConfigError(f"{path}: {LOCAL_REFUSED}")
    return {str(k): dict(v) for k, v in doc.items()}
