"""Custom actions run by the Rasa action server (`rasa run actions`): thin adapters that call bot/."""
