"""The ``secagg`` protocol: masked additive sharing with dropout recovery (SPEC.md)."""
