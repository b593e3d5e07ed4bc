"""Channel tests use `providers_env` and `sandbox` from tests/conftest.py."""
