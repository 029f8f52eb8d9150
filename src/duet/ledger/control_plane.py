"""The cloud control plane is a door too: facts about a CVM's cloud resource, and their judges.

An owner with cloud rights, or the host through the controller's own workload identity, can
reopen what provisioning closed without ever touching SSH: turn on boot diagnostics or the
serial console, add a VM extension (Run Command, VMAccess: run scripts as root, reset
keys), re-enable the VM agent, open the network security group. So on every entry into
in-service the controller reads the VM's model from the cloud API, reduces it to the facts
below (logged in a `control_plane` entry with a digest of the full model), and judges them
as it judges lockdown facts. The judges are pure and live here, in the ledger package,
because `duet verify` runs them again on the logged facts: a log judged by an older, weaker
judge then fails.

Azure, Google Cloud and libvirt (`control_plane_libvirt`) are judged; a provider without
judges (qemu, local) has no `control_plane` entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

JUDGE_VERSION = 1

AZURE_CHECKS = (
    "confidential_vm",
    "secure_boot_vtpm",
    "no_vm_agent",
    "no_extensions",
    "no_password_login",
    "boot_diagnostics_off",
    "ssh_only_from_controller",
)

GCP_CHECKS = (
    "confidential_vm",
    "shielded_vm",
    "no_os_login",
    "project_keys_blocked",
    "serial_console_off",
    "no_service_account",
    "ssh_only_from_controller",
)

Verdict = tuple[str, bool, str]


def model_digest(*documents: Any) -> str:
    """SHA-256 of the canonical JSON of the documents read (the full model, for audits)."""
    return hashlib.sha256(json.dumps(documents, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _get(doc: Any, *path: str) -> Any:
    for p in path:
        doc = doc.get(p) if isinstance(doc, Mapping) else None
    return doc


def azure_facts(vm: Mapping[str, Any], nsg: Mapping[str, Any], extensions: Sequence[str],
                controller_cidr: str) -> dict[str, Any]:
    """The security-relevant fields of an Azure VM, its NSG and its extensions (pure)."""
    props = _get(vm, "properties")
    linux = _get(props, "osProfile", "linuxConfiguration")
    rules = []
    for r in _get(nsg, "properties", "securityRules") or []:
        p = _get(r, "properties") or {}
        rules.append({k: p.get(k) for k in ("direction", "access", "protocol", "sourceAddressPrefix",
                                            "sourceAddressPrefixes", "destinationPortRange",
                                            "destinationPortRanges", "priority")} | {"name": _get(r, "name")})
    return {
        "provider": "azure",
        "judge_version": JUDGE_VERSION,
        "security_type": _get(props, "securityProfile", "securityType"),
        "secure_boot": _get(props, "securityProfile", "uefiSettings", "secureBootEnabled"),
        "vtpm": _get(props, "securityProfile", "uefiSettings", "vTpmEnabled"),
        "disk_encryption": _get(props, "storageProfile", "osDisk", "managedDisk", "securityProfile",
                                "securityEncryptionType"),
        "provision_vm_agent": _get(linux, "provisionVMAgent"),
        "allow_extension_operations": _get(props, "osProfile", "allowExtensionOperations"),
        "disable_password_authentication": _get(linux, "disablePasswordAuthentication"),
        "has_admin_password": _get(props, "osProfile", "adminPassword") is not None,
        "boot_diagnostics": _get(props, "diagnosticsProfile", "bootDiagnostics", "enabled"),
        "extensions": sorted(str(e) for e in extensions),
        "nsg_rules": rules,
        "controller_cidr": controller_cidr,
    }


def _ports(rule: Mapping[str, Any]) -> list[str]:
    ranges = rule.get("destinationPortRanges") or [rule.get("destinationPortRange")]
    return [str(p) for p in ranges if p is not None]


def _sources(rule: Mapping[str, Any]) -> list[str]:
    sources = rule.get("sourceAddressPrefixes") or [rule.get("sourceAddressPrefix")]
    return [str(s) for s in sources if s is not None]


def _ssh_only_from_controller(f: Mapping[str, Any]) -> Verdict:
    """Inbound allows: only TCP 22 from the controller's address; a deny-all must close the rest."""
    cidr = str(f.get("controller_cidr"))
    rules = [r for r in f.get("nsg_rules") or [] if isinstance(r, Mapping) and r.get("direction") == "Inbound"]
    bad = [str(r.get("name")) for r in rules if r.get("access") == "Allow"
           and (_ports(r) != ["22"] or _sources(r) != [cidr] or r.get("protocol") not in ("Tcp", "TCP"))]
    deny_all = any(r.get("access") == "Deny" and _ports(r) == ["*"] and _sources(r) == ["*"] for r in rules)
    if bad:
        return "ssh_only_from_controller", False, f"inbound rules open more than SSH from {cidr}: {', '.join(bad)}"
    if not deny_all:
        return "ssh_only_from_controller", False, "no inbound deny-all rule in the network security group"
    return "ssh_only_from_controller", True, f"inbound: only TCP 22 from {cidr}, everything else denied"


def _azure(f: Mapping[str, Any]) -> list[Verdict]:
    def flag(name: str, ok: bool, good: str, bad: str) -> Verdict:
        return name, ok, good if ok else bad

    return [
        flag("confidential_vm", f.get("security_type") == "ConfidentialVM"
             and f.get("disk_encryption") == "DiskWithVMGuestState",
             "ConfidentialVM with a DiskWithVMGuestState OS disk",
             f"security type {f.get('security_type')}, OS disk {f.get('disk_encryption')}"),
        flag("secure_boot_vtpm", f.get("secure_boot") is True and f.get("vtpm") is True,
             "secure boot and vTPM on", f"secure boot {f.get('secure_boot')}, vTPM {f.get('vtpm')}"),
        flag("no_vm_agent", f.get("provision_vm_agent") is False, "no VM agent provisioned",
             f"provisionVMAgent is {f.get('provision_vm_agent')}"),
        flag("no_extensions", f.get("allow_extension_operations") is False and not f.get("extensions"),
             "extensions disallowed and none installed",
             f"allowExtensionOperations {f.get('allow_extension_operations')}, "
             f"extensions {', '.join(f.get('extensions') or []) or 'none'}"),
        flag("no_password_login", f.get("disable_password_authentication") is True
             and f.get("has_admin_password") is False, "password authentication disabled, no admin password",
             "password login is possible"),
        flag("boot_diagnostics_off", f.get("boot_diagnostics") is False,
             "boot diagnostics (and with them the serial console) off",
             f"boot diagnostics is {f.get('boot_diagnostics')}: the serial console can be reached"),
        _ssh_only_from_controller(f),
    ]


def gcp_facts(instance: Mapping[str, Any], firewalls: Sequence[Mapping[str, Any]],
              controller_cidr: str) -> dict[str, Any]:
    """The security-relevant fields of a GCE instance (REST JSON) and of every firewall
    rule that applies to it (no target tags, or one of the instance's tags) (pure)."""
    meta = {str(i.get("key")): str(i.get("value")) for i in _get(instance, "metadata", "items") or []
            if isinstance(i, Mapping)}
    tags = set(_get(instance, "tags", "items") or [])
    rules = []
    for fw in firewalls:
        targets = set(fw.get("targetTags") or [])
        if fw.get("disabled") or fw.get("direction", "INGRESS") != "INGRESS" or (targets and not targets & tags):
            continue
        rules.append({"name": fw.get("name"), "priority": fw.get("priority", 1000),
                      "source_ranges": list(fw.get("sourceRanges") or []),
                      "allowed": [{"protocol": a.get("IPProtocol"), "ports": list(a.get("ports") or [])}
                                  for a in fw.get("allowed") or []],
                      "denied": [{"protocol": d.get("IPProtocol"), "ports": list(d.get("ports") or [])}
                                 for d in fw.get("denied") or []]})
    shielded = _get(instance, "shieldedInstanceConfig") or {}
    keys = [line for line in meta.get("ssh-keys", "").splitlines() if line.strip()]
    return {
        "provider": "gcp",
        "judge_version": JUDGE_VERSION,
        "confidential_type": _get(instance, "confidentialInstanceConfig", "confidentialInstanceType"),
        "secure_boot": shielded.get("enableSecureBoot"),
        "vtpm": shielded.get("enableVtpm"),
        "integrity_monitoring": shielded.get("enableIntegrityMonitoring"),
        "metadata": {k: meta.get(k) for k in ("enable-oslogin", "block-project-ssh-keys", "serial-port-enable",
                                              "serial-port-logging-enable", "enable-guest-attributes")},
        "ssh_keys": len(keys),
        "service_accounts": [str(_get(a, "email")) for a in instance.get("serviceAccounts") or []],
        "firewall_rules": rules,
        "controller_cidr": controller_cidr,
    }


def _is(value: object, word: str) -> bool:
    return isinstance(value, str) and value.strip().upper() == word


def _gcp_firewall(f: Mapping[str, Any]) -> Verdict:
    cidr = str(f.get("controller_cidr"))
    rules = [r for r in f.get("firewall_rules") or [] if isinstance(r, Mapping)]
    bad = [str(r.get("name")) for r in rules for a in r.get("allowed") or []
           if not (str(a.get("protocol")).lower() == "tcp" and a.get("ports") == ["22"]
                   and r.get("source_ranges") == [cidr])]
    deny_all = any(d.get("protocol") == "all" and not d.get("ports") and "0.0.0.0/0" in (r.get("source_ranges") or [])
                   for r in rules for d in r.get("denied") or [])
    if bad:
        return "ssh_only_from_controller", False, f"firewall rules open more than SSH from {cidr}: {', '.join(bad)}"
    if not deny_all:
        return "ssh_only_from_controller", False, "no deny-all ingress rule applies to the instance"
    return "ssh_only_from_controller", True, f"ingress: only TCP 22 from {cidr}, everything else denied"


def _gcp(f: Mapping[str, Any]) -> list[Verdict]:
    meta = f.get("metadata") if isinstance(f.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return [
        ("confidential_vm", f.get("confidential_type") in ("SEV_SNP", "TDX"),
         f"confidential instance type {f.get('confidential_type')}"),
        ("shielded_vm", all(f.get(k) is True for k in ("secure_boot", "vtpm", "integrity_monitoring")),
         f"secure boot {f.get('secure_boot')}, vTPM {f.get('vtpm')}, integrity {f.get('integrity_monitoring')}"),
        ("no_os_login", _is(meta.get("enable-oslogin"), "FALSE"), f"enable-oslogin is {meta.get('enable-oslogin')}"),
        ("project_keys_blocked", _is(meta.get("block-project-ssh-keys"), "TRUE") and f.get("ssh_keys") == 1,
         f"block-project-ssh-keys {meta.get('block-project-ssh-keys')}, {f.get('ssh_keys')} instance key(s)"),
        ("serial_console_off", _is(meta.get("serial-port-enable"), "FALSE")
         and not _is(meta.get("serial-port-logging-enable"), "TRUE"),
         f"serial-port-enable {meta.get('serial-port-enable')}"),
        ("no_service_account", not f.get("service_accounts"),
         f"service accounts: {', '.join(f.get('service_accounts') or []) or 'none'}"),
        _gcp_firewall(f),
    ]


JUDGES: dict[str, Callable[[Mapping[str, Any]], list[Verdict]]] = {"azure": _azure, "gcp": _gcp}


def launch_problem(facts: Mapping[str, Any], launch: object) -> str | None:
    """Facts that name the TEE they were judged against (libvirt: read from the domain's
    metadata, which libvirtd's administrator can rewrite, together with the definition of
    the next boot) must name the TEE the controller logged at provisioning
    (`launch.tee_effective`); else a next boot without SEV-SNP / TDX could pass as "no TEE
    requested"."""
    expected = facts.get("expected")
    if not isinstance(expected, Mapping) or "tee" not in expected:
        return None
    logged = launch.get("tee_effective") if isinstance(launch, Mapping) else None
    if expected.get("tee") != logged:
        return f"judged as a {expected.get('tee')} launch, but the CVM was provisioned as {logged}"
    return None


def judge(facts: Mapping[str, Any]) -> list[Verdict]:
    """Every check of the facts' provider; facts of an unknown provider or judge fail."""
    judge_fn = JUDGES.get(str(facts.get("provider")))
    if judge_fn is None:
        return [("control_plane", False, f"no judge for provider {facts.get('provider')!r}")]
    if facts.get("judge_version") != JUDGE_VERSION:
        return [("control_plane", False, f"facts of judge version {facts.get('judge_version')}, "
                 f"this verifier judges version {JUDGE_VERSION}")]
    return judge_fn(facts)


def _register_libvirt() -> None:
    """libvirt's judge lives in its own module (`control_plane_libvirt`)."""
    from duet.ledger import control_plane_libvirt

    JUDGES["libvirt"] = control_plane_libvirt.judge


_register_libvirt()
