"""The ``robust`` protocol: verifiable Shamir sharing with input validation (SPEC.md)."""
