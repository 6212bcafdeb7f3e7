"""Test-only shim: see tests/helpers/shims/README.md."""
