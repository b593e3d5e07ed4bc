#!/usr/bin/env bash
# Start the action server and the Rasa server (with the web chat), print the URL, stop both on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

RASA_PORT=${RASA_PORT:-5005}
ACTIONS_PORT=${ACTIONS_PORT:-5055}
SANDBOX_PORT=${SANDBOX_PORT:-5099}
CONSOLE_PORT=${CONSOLE_PORT:-5088}
mkdir -p var/log

# Rasa's HTTP API (trigger_intent for reminders, the console's pause/reply/resume) is on loopback and needs this
# token; a deployment sets RASA_TOKEN itself.
if [ -z "${RASA_TOKEN:-}" ]; then
  [ -s var/rasa_token ] || (umask 077; .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(32))" >var/rasa_token)
  RASA_TOKEN=$(cat var/rasa_token)
fi
export RASA_TOKEN RASA_URL="http://127.0.0.1:${RASA_PORT}" CONSOLE_URL="http://127.0.0.1:${CONSOLE_PORT}"

# Without real provider settings every channel talks to the local sandbox (WeChat and Twilio APIs on
# loopback); a deployment that sets SANDBOX_URL to something else, or "off", runs without it.
export SANDBOX_URL=${SANDBOX_URL:-http://127.0.0.1:${SANDBOX_PORT}}
export PUBLIC_BASE_URL=${PUBLIC_BASE_URL:-http://127.0.0.1:${RASA_PORT}}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [ "$SANDBOX_URL" = "http://127.0.0.1:${SANDBOX_PORT}" ]; then
  .venv/bin/python -m sandbox --port "$SANDBOX_PORT" --bot-url "http://127.0.0.1:${RASA_PORT}" >var/log/sandbox.log 2>&1 &
  pids+=($!)
  with_sandbox=1
fi
SCHEDULER_PORT=${SCHEDULER_PORT:-5077} .venv/bin/python -m scheduler >var/log/scheduler.log 2>&1 &
pids+=($!)
# The nurse console. On the first run, demo logins are created and kept in var/console-demo-logins.txt.
if [ ! -s var/console-demo-logins.txt ]; then
  (umask 077; .venv/bin/python -m console demo-staff >var/console-demo-logins.txt)
fi
.venv/bin/python -m console serve --port "$CONSOLE_PORT" >var/log/console.log 2>&1 &
pids+=($!)
.venv/bin/rasa run actions --port "$ACTIONS_PORT" --actions actions >var/log/actions.log 2>&1 &
pids+=($!)
# endpoints.yml names the action server's default port; follow ACTIONS_PORT when it is changed
sed "s#127.0.0.1:5055#127.0.0.1:${ACTIONS_PORT}#" endpoints.yml >var/endpoints.yml
.venv/bin/rasa run --model models/current.tar.gz --port "$RASA_PORT" --interface 127.0.0.1 \
  --endpoints var/endpoints.yml --credentials credentials.yml --enable-api --auth-token "$RASA_TOKEN" \
  >var/log/rasa.log 2>&1 &
pids+=($!)

echo "Starting the assistant (loading the model takes about a minute; logs in var/log/)..."
for _ in $(seq 1 180); do
  if curl -fsS "http://127.0.0.1:${RASA_PORT}/status" >/dev/null 2>&1 ||
     curl -fsS "http://127.0.0.1:${RASA_PORT}/webhooks/webchat/health" >/dev/null 2>&1; then
    echo
    echo "  Web chat:  http://127.0.0.1:${RASA_PORT}/webhooks/webchat/"
    echo "  REST API:  POST http://127.0.0.1:${RASA_PORT}/webhooks/rest/webhook"
    echo "  Scheduler: http://127.0.0.1:${SCHEDULER_PORT:-5077}/health   (care-plan reminders; see README)"
    echo "  Console:   http://127.0.0.1:${CONSOLE_PORT}/   (nurse takeover; demo logins in var/console-demo-logins.txt)"
    if [ -n "${with_sandbox:-}" ]; then
      echo "  Sandbox:   http://127.0.0.1:${SANDBOX_PORT}/   (write as a WeChat or SMS patient; see what each patient received)"
    fi
    echo
    echo "Press Ctrl-C to stop."
    wait -n "${pids[@]}"
    echo "a process stopped; see var/log/" >&2
    exit 1
  fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a process failed to start; see var/log/" >&2; tail -20 var/log/*.log >&2; exit 1; }
  done
  sleep 1
done
echo "the Rasa server did not answer within 180 s; see var/log/rasa.log" >&2
exit 1
