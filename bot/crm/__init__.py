"""The CRM store: patients and their channel identities, departments, doctors, schedule slots,
appointments, escalations, consent and the audit log."""
