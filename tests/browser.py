"""A minimal headless-Chromium driver over the DevTools protocol, for tests.

It speaks CDP over `--remote-debugging-pipe` (NUL-terminated JSON on fds 3 and 4), so it needs
neither a websocket library nor a network port, and Debian's `chromium` is the only
requirement. The flags keep Chromium off the network: this machine has none, and a browser that
tries to reach its vendor's services stalls.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe", "--window-size=1280,2000"]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed (make test-slow installs Debian's `chromium` as root)")


def _onto_3_and_4(read_fd: int, write_fd: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4, via high fds so neither clobbers the other."""
    high_r, high_w = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 100), fcntl.fcntl(write_fd, fcntl.F_DUPFD, 100)
    os.dup2(high_r, 3)
    os.dup2(high_w, 4)


class Chromium:
    def __init__(self, workdir: Path, timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self._id = 0
        self._buf = b""
        self.session: str | None = None

    def __enter__(self) -> Chromium:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        profile = tempfile.mkdtemp(dir=self.workdir, prefix="chromium-")
        # The child reads commands on fd 3 and writes replies on fd 4.
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _onto_3_and_4(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._w, self._r = to_browser_w, from_browser_r
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._w)
        os.close(self._r)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = self._next()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
        raise TimeoutError(f"chromium did not answer {method}")

    def _next(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(raw))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while self.eval("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            time.sleep(0.05)

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
