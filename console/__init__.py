"""The nurse console: escalation queue, live chat takeover, patient panel, dashboard and audit log."""
