"""Azure CVM evidence: HCL report, vTPM quote, trustee envelopes, MAA tokens."""
