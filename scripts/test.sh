#!/usr/bin/env bash
# Run every test (fast unit tests, then the model-backed dialogue tests in the same session).
# PostgreSQL and Redis tests run against the real servers: when one is down this says so and skips them,
# unless CI=true, where a missing server fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export RASA_TELEMETRY_ENABLED=false SQLALCHEMY_SILENCE_UBER_WARNING=1
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
