"""duet: a trustworthy controller for confidential VMs, with a verifiable command log."""

__version__ = "0.1.0"
