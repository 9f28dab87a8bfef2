"""Steering vectors and control vectors (built in a later issue)."""
