"""Test-only stand-in for ``triton.language`` (names used in annotations only)."""

constexpr = object
