"""The hospital domain: CRM store, booking rules, time parsing, hospital facts.

Every process (Rasa channels, the action server, the scheduler, the console) calls into this package;
nothing here imports Rasa's server or a web framework.
"""
