"""Operating the controller: the start line, structured access logs that carry no content,
Prometheus metrics that match what happened, health while a command runs, and one clear
line (exit 1) when the data dir or the port is taken."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx

from helpers import ControllerProc


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_count_what_happened_and_logs_carry_no_content(controller_factory) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory().start("--log-format", "json")
    owner = c.owner()
    cvm = owner.create("local", name="metrics")["id"]
    with httpx.Client(base_url=c.url, timeout=30) as http:
        before = http.get("/metrics").text
        for i in range(3):
            owner.run(cvm, f"echo SECRETMARK-{i}")
        assert http.get(f"/v1/cvms/{cvm}").status_code == 200
        text = http.get("/metrics").text
    intents = _metric(text, "duet_http_requests_total", route="/v1/intents", code="200")
    assert intents - _metric(before, "duet_http_requests_total", route="/v1/intents", code="200") == 3
    assert _metric(text, "duet_command_seconds_count") - _metric(before, "duet_command_seconds_count") == 3
    assert _metric(text, "duet_log_append_seconds_count") >= 6  # intent+command, then result, per run
    assert _metric(text, "duet_cvms", status="ready", mode="in-update") == 1
    log = c.log()
    start = [line for line in log.splitlines() if line.startswith("duet controller: listening on")]
    assert len(start) == 1 and c.url in start[0] and "TEE simulated (SIMULATED)" in start[0]
    assert str(c.data) in start[0]
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    runs = [a for a in access if a.get("route") == "/v1/intents"]
    assert len(runs) == 4 and all(a["code"] in (200, 201) and a["method"] == "POST" for a in runs)
    assert any(a.get("cvm") == cvm for a in access if a.get("route") == "/v1/cvms/{cvm_id}")
    # The host sees these lines: no command text, output or signed intent in them.
    assert "SECRETMARK" not in log and "eyJ" not in log


def test_health_answers_while_a_command_runs(controller: ControllerProc) -> None:
    owner = controller.owner()
    cvm = owner.create("local", name="health")["id"]
    runner = threading.Thread(target=owner.run, args=(cvm, "sleep 3"))
    runner.start()
    time.sleep(0.5)
    with httpx.Client(base_url=controller.url, timeout=2) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").status_code == 200
        assert runner.is_alive()  # the command was still running when health answered
    runner.join()


def _serve(c: ControllerProc, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "duet.cli.main", "controller", "serve", "--data", str(c.data),
                           "--listen", f"127.0.0.1:{c.port}", *extra], capture_output=True, text=True, timeout=60)


def test_second_controller_and_busy_port_get_one_line(controller_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c: ControllerProc = controller_factory().start()
    same_dir = _serve(ControllerProc(data=c.data, owner_key=c.owner_key))
    assert same_dir.returncode == 1
    assert same_dir.stderr.strip().splitlines() == [same_dir.stderr.strip()]
    assert same_dir.stderr.startswith("error [data_dir_in_use]") and "Traceback" not in same_dir.stderr
    busy = _serve(ControllerProc(data=tmp_path / "other", owner_key=c.owner_key, port=c.port))
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines() == [busy.stderr.strip()]
    assert busy.stderr.startswith("error [address_in_use]")
    # the first controller is unharmed
    assert httpx.get(f"{c.url}/readyz", timeout=5).status_code == 200
