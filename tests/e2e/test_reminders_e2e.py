"""A conversational reminder end to end: the dispatcher renders the catalog text and triggers the intent in the
patient's WeChat conversation through the running Rasa server; the patient answers there."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from zoneinfo import ZoneInfo

from bot.crm import patients
from bot.crm.models import OutboxMessage, OutboxStatus
from bot.db import session_scope
from scheduler import plans
from scheduler.dispatcher import Dispatcher, DispatchSettings
from tests.e2e.conftest import RasaServer
from tests.e2e.patients import WeChatPatient

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_a_medication_reminder_arrives_in_the_wechat_conversation(
    rasa_server: RasaServer, sandbox: Any, dialogue_db: str, process_settings: Any
) -> None:
    process_settings(DATABASE_URL=dialogue_db, SANDBOX_URL=sandbox.url)

    patient = WeChatPatient(rasa_server.url, sandbox, "o" + uuid.uuid4().hex[:27])
    patient.say("你好")  # the patient wrote once: the conversation exists, the window is open
    start = datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI)
    with session_scope() as session:
        record, _ = patients.match_or_register(session, "吴服药", "+8613800138777")
        patients.link_identity(session, record, "wechat", patient.openid)
        plan = plans.enroll(
            session, patient_id=record.id, template="hypertension", anchor_at=start, source="test",
            source_ref=uuid.uuid4().hex, params={"times": ["20:00"], "drug": "氨氯地平", "dose": "5mg"}, now=start,
        )  # fmt: skip
        plan_id = plan.id
    dispatcher = Dispatcher("e2e", DispatchSettings(rate_limits={}, rasa_url=rasa_server.url, workers=2))
    # other tests' bookings share this database, and their reminders may be due too: all go out
    stats = dispatcher.run_until_idle(datetime(2026, 11, 23, 20, 0, tzinfo=SHANGHAI) + timedelta(seconds=1))
    assert stats.sent >= 1 and stats.failed == 0
    pushed = patient.wait_for_push()
    assert "氨氯地平" in pushed and "1. 已服药" in pushed
    with session_scope() as session:
        sent = session.query(OutboxMessage).filter_by(plan_id=plan_id, status=OutboxStatus.SENT).one()
        assert sent.channel == "wechat"
    assert rasa_server.bot_texts(patient.openid)[-1].startswith(pushed.split("\n")[0][:10])
