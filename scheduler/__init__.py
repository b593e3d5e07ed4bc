"""The care-plan scheduler process: templates become outbox rows (plans.py), dispatchers send what is due
(dispatcher.py), a few periodic APScheduler jobs drive them (service.py), and patients, appointments,
discharges and prescriptions are imported from CSV or FHIR R4 (importer.py)."""
