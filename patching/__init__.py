"""Patching methods: activation patching (and, in later issues, attribution, RelP, subspace)."""
