"""How CVMs come to exist and are driven: providers and the controller's SSH channel.

* `duet.cvm.provider` — the `Provider` protocol and `Provisioned` (what the log records).
* `duet.cvm.local` — the `local` provider: a real, locked-down sshd per CVM.
* `duet.cvm.ssh` — `CvmConnection`: one pinned, persistent asyncssh connection per CVM.
* `duet.cvm.errors` — typed errors with stable codes.

Submodules are not imported here, so that importing `duet.cvm.errors` (as the HTTP
layer does) does not pull in asyncssh.
"""
