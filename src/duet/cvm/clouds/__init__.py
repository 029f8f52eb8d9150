"""Helpers shared by the cloud and on-premises providers (`azure`, `gcp`, `qemu`)."""
