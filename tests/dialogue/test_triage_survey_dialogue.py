"""Emergencies, triage and questionnaires in Chinese, end to end: NLU (with the red-flag detector), rules,
forms, the real action server and the CRM."""

from __future__ import annotations

from sqlalchemy import select

from bot.crm.models import Escalation, SurveyResponse, SurveyStatus, TriageRecord
from bot.db import session_scope
from bot.surveys import fhir


def _escalations(db: str, sender: str) -> list:
    with session_scope(db) as session:
        rows = session.scalars(select(Escalation).where(Escalation.sender_id == sender)).all()
        return [(row.reason, row.priority) for row in rows]


def _response(db: str, sender: str) -> SurveyResponse:
    with session_scope(db) as session:
        response = session.scalars(
            select(SurveyResponse).where(SurveyResponse.sender_id == sender).order_by(SurveyResponse.id.desc())
        ).first()
        assert response is not None
        response.answers  # noqa: B018 - load before the session closes
        return response


def test_an_emergency_in_the_middle_of_booking_is_answered_first_and_escalated(conversation, dialogue_db) -> None:
    assert "姓名" in conversation.say_text("我想挂明天上午心内科的号")
    reply = conversation.say_text("等等，我爸突然嘴歪了，说话也不清楚")
    assert "120" in reply and "急诊" in reply and "父亲" in reply
    assert "健康路88号" in reply  # the emergency address from data/hospital/hospital.yml
    assert ("red_flag", 1) in _escalations(dialogue_db, conversation.sender_id)
    assert conversation.tracker().active_loop_name is None  # no booking goes on
    assert "姓名" not in conversation.say_text("你好")


def test_suicidal_thoughts_get_crisis_wording_the_hotline_and_a_nurse(conversation, dialogue_db) -> None:
    reply = conversation.say_text("活着没意思，安眠药我已经攒够了")
    assert "12356" in reply and "护士" in reply
    assert "预约" not in reply
    assert ("crisis", 1) in _escalations(dialogue_db, conversation.sender_id)


def test_a_dangerous_reading_is_an_emergency(conversation) -> None:
    reply = conversation.say_text("刚量的血压210/125，头痛得厉害")
    assert "120" in reply


def test_negated_and_past_symptoms_are_not_emergencies(conversation, dialogue_db) -> None:
    reply = conversation.say_text("没有胸痛，就是这几天一直咳嗽有黄痰")
    assert "120" not in reply or "建议就诊" in reply
    assert "呼吸" in reply
    assert not [e for e in _escalations(dialogue_db, conversation.sender_id) if e[1] == 1]


def test_symptoms_lead_to_a_department_and_a_booking_with_it(conversation, dialogue_db) -> None:
    reply = conversation.say_text("最近老是胃胀反酸，吃完饭还烧心")
    assert "消化内科" in reply and "需要帮您预约" in reply
    assert "姓名" in conversation.say_text("好的")
    assert "手机号" in conversation.say_text("赵小胃")
    assert "哪一天" in conversation.say_text("13700001234")  # the department is already known
    offers = conversation.say_text("明天下午")  # 陈静 (消化内科) sees patients on Tuesday afternoons
    assert "消化内科" in offers and "陈静" in offers
    with session_scope(dialogue_db) as session:
        record = session.scalars(select(TriageRecord).where(TriageRecord.sender_id == conversation.sender_id)).first()
        assert record.level == 4 and record.departments[0]["code"] == "gastroenterology"


def test_phq9_in_chat_with_every_kind_of_answer(conversation, dialogue_db) -> None:
    first = conversation.say_text("我想做个抑郁自测")
    assert "PHQ-9" in first and "在过去的两周里" in first and "（1/9）做事时提不起劲或没有兴趣" in first
    assert "没能识别" not in first  # the request itself is not read as an answer
    replies = ["好几天", "2", "B", "几乎每天都这样", "完全不会", "跳过", "一半以上的天数", "1"]
    for number, answer in enumerate(replies, start=2):
        assert f"（{number}/9）" in conversation.say_text(answer)
    done = conversation.say_text("完全不会")
    assert "总分是 10 分" in done and "满分 27 分" in done and "中度" in done
    assert "精神心理科" in done  # 10 or more: the usual screening cut-off, a nurse follows up
    assert ("survey_positive", 2) in _escalations(dialogue_db, conversation.sender_id)
    response = _response(dialogue_db, conversation.sender_id)
    assert response.status == SurveyStatus.COMPLETED and response.total_score == 10 and response.band == "moderate"
    stored = {a.item: (a.value, a.skipped) for a in response.answers}
    assert stored == {
        "1": (1, False), "2": (2, False), "3": (1, False), "4": (3, False), "5": (0, False),
        "6": (None, True), "7": (2, False), "8": (1, False), "9": (0, False),
    }  # fmt: skip
    exported = fhir.questionnaire_response(response)
    assert exported["questionnaire"] == "http://loinc.org/q/44249-1" and exported["status"] == "completed"
    assert exported["item"][0]["answer"][0]["valueCoding"]["code"] == "LA6569-3"
    assert exported["item"][-1] == {"linkId": "44261-6", "text": "总分", "answer": [{"valueInteger": 10}]}


def test_phq9_item_9_above_zero_is_a_crisis_whatever_the_total(conversation, dialogue_db) -> None:
    conversation.say_text("做一下PHQ9")
    for _ in range(8):
        conversation.say_text("0")
    reply = conversation.say_text("好几天")
    assert "12356" in reply
    assert ("survey_safety", 1) in _escalations(dialogue_db, conversation.sender_id)
    assert _response(dialogue_db, conversation.sender_id).total_score == 1


def test_a_survey_pauses_resumes_where_it_stopped_and_survives_a_question(conversation, dialogue_db) -> None:
    opening = conversation.say_text("我想评价一下这次就诊")
    assert "（1/6）" in opening and "没能识别" not in opening
    assert "（2/6）" in conversation.say_text("五星")
    info = conversation.say_text("停车场在哪里")
    assert "停车" in info and "（2/6）" in info  # answered, then the same item again
    assert "（3/6）" in conversation.say_text("非常满意")
    assert "暂停" in conversation.say_text("等会再说，我先去缴费")
    assert _response(dialogue_db, conversation.sender_id).status == SurveyStatus.PAUSED
    assert "（3/6）" in conversation.say_text("继续问卷")
    conversation.say_text("还行")
    conversation.say_text("4分")
    conversation.say_text("十分")
    assert "感谢您的评价" in conversation.say_text("护士很耐心，谢谢")
    response = _response(dialogue_db, conversation.sender_id)
    answers = {a.item: (a.value, a.text) for a in response.answers}
    assert answers["doctor"] == (5, None) and answers["nurse"] == (5, None) and answers["nps"] == (10, None)
    assert answers["comment"] == (None, "护士很耐心，谢谢")


def test_a_refused_survey_stops_and_keeps_what_was_answered(conversation, dialogue_db) -> None:
    conversation.say_text("做个焦虑测评")
    conversation.say_text("有几天")
    assert "不再打扰" in conversation.say_text("不做了")
    response = _response(dialogue_db, conversation.sender_id)
    assert response.status == SurveyStatus.REFUSED and len(response.answers) == 1


def test_a_survey_started_from_outside_continues_with_the_patients_reply(
    conversation, agent, dialogue_db, event_loop_for_agent
) -> None:
    from rasa.core.channels.channel import CollectingOutputChannel

    output = CollectingOutputChannel()

    async def trigger() -> None:  # what POST /conversations/<id>/trigger_intent does
        tracker = await agent.processor.fetch_tracker_with_initial_session(conversation.sender_id, output)
        await agent.trigger_intent("EXTERNAL_start_survey", {"survey_instrument": "satisfaction"}, output, tracker)

    event_loop_for_agent.run_until_complete(trigger())
    asked = "\n".join(m.get("text") or "" for m in output.messages)
    assert "（1/6）" in asked
    assert "（2/6）" in conversation.say_text("5分")
    response = _response(dialogue_db, conversation.sender_id)
    assert response.trigger == "scheduler" and response.answers[0].value == 5


def test_an_emergency_during_a_survey_comes_first(conversation, dialogue_db) -> None:
    conversation.say_text("我想做个焦虑自评")
    reply = conversation.say_text("我现在胸口压着疼，一直出冷汗")
    assert "120" in reply
    assert ("red_flag", 1) in _escalations(dialogue_db, conversation.sender_id)
