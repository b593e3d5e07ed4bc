"""Intent, slot and form names, written once. domain.yml is the other place they appear."""

# intents
AFFIRM = "affirm"
DENY = "deny"
STOP = "stop"
NLU_FALLBACK = "nlu_fallback"
EMERGENCY = "emergency"  # set by nlu.components.RedFlagDetector, never learned

# slots
PATIENT_ID = "patient_id"
ID_NAME = "id_name"
ID_PHONE = "id_phone"
RELATION = "relation"
FAMILY_NAME = "family_name"
FAMILY_PHONE = "family_phone"
DEPARTMENT = "department"
DOCTOR_ID = "doctor_id"
DATE_PREF = "date_pref"
SLOT_CHOICE = "slot_choice"
OFFERED_SLOTS = "offered_slots"
APPOINTMENT_CHOICE = "appointment_choice"
OFFERED_APPOINTMENTS = "offered_appointments"
CONFIRMED = "confirmed"
REQUESTED_SLOT = "requested_slot"
# triage: the department it recommended (booking starts from it), its clarifying options, what was described
TRIAGE_DEPARTMENT = "triage_department"
TRIAGE_RELATION = "triage_relation"
TRIAGE_OPTIONS = "triage_options"
TRIAGE_TEXT = "triage_text"
# surveys: the response being answered (CRM id), the requested slot, whether a survey is ready to run
SURVEY_ID = "survey_id"
SURVEY_ANSWER = "survey_answer"
SURVEY_READY = "survey_ready"
TRIAGE_ACTIONS = {"action_triage", "action_triage_choose"}

IDENTITY_SLOTS = [ID_NAME, ID_PHONE]
FAMILY_SLOTS = [FAMILY_NAME, FAMILY_PHONE]

# forms
BOOKING_FORM = "booking_form"
CANCEL_FORM = "cancel_form"
RESCHEDULE_FORM = "reschedule_form"
QUERY_FORM = "query_form"
SURVEY_FORM = "survey_form"

# Every slot a form fills; cleared when a form starts or stops so that nothing leaks between flows.
FORM_SLOTS = [
    ID_NAME,
    ID_PHONE,
    RELATION,
    FAMILY_NAME,
    FAMILY_PHONE,
    DEPARTMENT,
    DOCTOR_ID,
    DATE_PREF,
    SLOT_CHOICE,
    OFFERED_SLOTS,
    APPOINTMENT_CHOICE,
    OFFERED_APPOINTMENTS,
    CONFIRMED,
]

# date_pref holds "start|end" in local ISO format, or this marker for "as soon as possible"
EARLIEST = "earliest"

# The intent that starts each form; another form's intent mid-form switches flows (see data/dialogue/rules.yml).
FLOW_INTENTS = {
    BOOKING_FORM: "book_appointment",
    CANCEL_FORM: "cancel_appointment",
    RESCHEDULE_FORM: "reschedule_appointment",
    QUERY_FORM: "query_appointment",
}
# Intents that interrupt any form; rules answer them (and resume or leave the form).
DIGRESSION_INTENTS = {
    "ask_hospital_info",
    "request_human",
    "complain",
    "opt_out",
    EMERGENCY,
    "share_media",  # a picture sent mid-form is acknowledged, then the form asks again
    "voice_unrecognized",
    # a scheduled reminder arriving mid-form is said, not read as the patient's answer
    "EXTERNAL_medication_reminder",
    "EXTERNAL_measurement_request",
    "EXTERNAL_revisit_reminder",
}
# Below this NLU confidence a message inside a form is read as an answer, not as a digression.
DIGRESSION_CONFIDENCE = 0.7
