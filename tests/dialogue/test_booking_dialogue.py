"""Booking conversations in Chinese, end to end: NLU, rules, the real action server and the CRM.

The clock is fixed at Monday 2026-11-23 09:00 Asia/Shanghai (tests/conftest.py), so 明天 is Tuesday the 24th.
"""

from __future__ import annotations

from sqlalchemy import select

from bot.crm.models import Appointment, AppointmentStatus, ChannelIdentity, Consent, Escalation, Patient
from bot.db import session_scope


def _register(conversation, name: str, phone: str, opening: str = "我想挂明天上午心内科的号") -> str:
    conversation.say_text(opening)
    conversation.say_text(name)
    return conversation.say_text(phone)


def _appointments_of(db: str, name: str) -> list:
    with session_scope(db) as session:
        return (
            session.execute(
                select(Appointment).join(Patient, Appointment.patient_id == Patient.id).where(Patient.name == name)
            )
            .scalars()
            .all()
        )


def test_new_patient_books_cardiology_tomorrow_morning(conversation, dialogue_db) -> None:
    assert "姓名" in conversation.say_text("我想挂明天上午心内科的号")
    assert "手机号" in conversation.say_text("王小明")
    offers = conversation.say_text("13800138000")
    assert "建档" in offers and "就诊卡号 MZ" in offers
    assert "11月24日" in offers and "心血管内科" in offers
    confirm = conversation.say_text("1")
    assert "2026年11月24日星期二" in confirm and "请确认" in confirm
    done = conversation.say_text("确认")
    assert "预约成功" in done and "门诊楼3层" in done
    booked = _appointments_of(dialogue_db, "王小明")
    assert [a.status for a in booked] == [AppointmentStatus.BOOKED]
    with session_scope(dialogue_db) as session:
        identity = session.execute(
            select(ChannelIdentity).where(ChannelIdentity.external_id == conversation.sender_id)
        ).scalar_one()
        assert identity.channel == "webchat"


def test_known_sender_is_not_asked_again_and_sees_their_appointments(conversation) -> None:
    _register(conversation, "陈晓", "13900001111")
    conversation.say_text("1")
    conversation.say_text("确认")
    listing = conversation.say_text("查一下我的预约")
    assert "陈晓" in listing and "心血管内科" in listing
    assert "姓名" not in listing


def test_existing_patient_on_a_new_channel_is_matched_not_registered_twice(conversation, agent, dialogue_db) -> None:
    from tests.dialogue.conftest import Conversation

    _register(conversation, "刘芳", "13600002222")
    other = Conversation(agent, conversation.loop, conversation.sender_id + "-phone2")
    other.say_text("我要挂号")
    other.say_text("刘芳")
    reply = other.say_text("136 0000 2222")
    assert "已核实" in reply and "建档" not in reply
    with session_scope(dialogue_db) as session:
        assert len(session.execute(select(Patient).where(Patient.name == "刘芳")).scalars().all()) == 1


def test_invalid_mobile_number_is_asked_again(conversation) -> None:
    conversation.say_text("预约挂号")
    conversation.say_text("王大锤")
    assert "手机号好像不对" in conversation.say_text("12345")
    assert "建档" in conversation.say_text("15912345678")


def test_a_date_in_the_past_is_refused(conversation) -> None:
    _register(conversation, "周杰", "13700003333", opening="挂骨科")
    assert "已经过去" in conversation.say_text("昨天")
    assert "骨科" in conversation.say_text("后天上午")


def test_unknown_department_is_explained_and_asked_again(conversation) -> None:
    _register(conversation, "孙丽", "13700004444", opening="我要挂号")
    assert "没有找到" in conversation.say_text("火星科")
    assert "皮肤科可预约" in conversation.say_text("皮肤科 越快越好")


def test_no_clinic_that_day_offers_the_nearest_days(conversation) -> None:
    reply = _register(conversation, "吴迪", "13700005555", opening="这周六想看眼科")
    assert "没有号" in reply and "最近还有号的日期" in reply
    assert "可预约" in conversation.say_text("11月25日")


def test_patient_says_cancel_mid_booking_and_nothing_is_booked(conversation, dialogue_db) -> None:
    _register(conversation, "郑爽", "13700006666")
    assert "已停止" in conversation.say_text("算了不挂了")
    assert _appointments_of(dialogue_db, "郑爽") == []
    assert "请回复序号" not in conversation.say_text("你好")


def test_booking_for_a_family_member_with_the_same_phone(conversation, dialogue_db) -> None:
    conversation.say_text("帮我妈挂个明天的全科")
    conversation.say_text("赵强")
    assert "母亲的姓名" in conversation.say_text("13500007777")
    assert "母亲的手机号" in conversation.say_text("张桂兰")
    assert "全科医学科" in conversation.say_text("同上")
    assert "张桂兰（母亲）" in conversation.say_text("2")
    assert "预约成功" in conversation.say_text("确认")
    (appointment,) = _appointments_of(dialogue_db, "张桂兰")
    with session_scope(dialogue_db) as session:
        assert session.get(Patient, appointment.booked_by_patient_id).name == "赵强"
    assert "张桂兰" in conversation.say_text("我的预约")


def test_double_request_for_the_same_day_is_refused(conversation, dialogue_db) -> None:
    _register(conversation, "钱多多", "13700008888")
    conversation.say_text("1")
    conversation.say_text("确认")
    conversation.say_text("再挂一个明天上午心内科")
    conversation.say_text("1")
    assert "无需重复挂号" in conversation.say_text("确认")
    assert len(_appointments_of(dialogue_db, "钱多多")) == 1


def test_cancel_the_only_appointment(conversation, dialogue_db) -> None:
    _register(conversation, "冯程", "13700009999")
    conversation.say_text("1")
    conversation.say_text("确认")
    assert "确定要取消" in conversation.say_text("帮我取消预约")
    assert "已为您取消" in conversation.say_text("确认")
    assert [a.status for a in _appointments_of(dialogue_db, "冯程")] == [AppointmentStatus.CANCELLED]


def test_keep_the_appointment_when_patient_changes_their_mind(conversation, dialogue_db) -> None:
    _register(conversation, "褚红", "13711110000")
    conversation.say_text("1")
    conversation.say_text("确认")
    conversation.say_text("我要退号")
    assert "保留" in conversation.say_text("不用了")
    assert [a.status for a in _appointments_of(dialogue_db, "褚红")] == [AppointmentStatus.BOOKED]


def test_reschedule_moves_the_appointment_and_frees_the_old_slot(conversation, dialogue_db) -> None:
    _register(conversation, "卫东", "13711112222")
    conversation.say_text("1")
    conversation.say_text("确认")
    (old,) = _appointments_of(dialogue_db, "卫东")
    assert "哪一天" in conversation.say_text("我想改约")
    assert "可预约" in conversation.say_text("下周一上午")
    assert "改为" in conversation.say_text("1")
    assert "改约成功" in conversation.say_text("确认")
    statuses = {a.slot_id: a.status for a in _appointments_of(dialogue_db, "卫东")}
    assert statuses[old.slot_id] == AppointmentStatus.RESCHEDULED
    assert sorted(statuses.values()) == [AppointmentStatus.BOOKED, AppointmentStatus.RESCHEDULED]


def test_no_appointment_to_cancel(conversation) -> None:
    _register(conversation, "蒋雯", "13711113333", opening="挂号")
    conversation.say_text("算了")
    assert "没有待就诊的预约" in conversation.say_text("取消预约")


def test_hospital_information_comes_from_the_data_file(conversation) -> None:
    assert "停车" in conversation.say_text("医院停车方便吗？")
    assert "健康路88号" in conversation.say_text("你们医院在哪里")


def test_question_mid_booking_is_answered_and_booking_continues(conversation) -> None:
    _register(conversation, "沈腾", "13711114444", opening="我想挂号")
    reply = conversation.say_text("对了，医院几点开门")
    assert "8:00" in reply and "科室" in reply  # answered, then asked for the department again
    assert "可预约" in conversation.say_text("眼科 后天")


def test_two_misunderstandings_in_a_row_offer_a_human_and_record_an_escalation(conversation, dialogue_db) -> None:
    # "/nlu_fallback" is what the FallbackClassifier produces for a message below the confidence threshold;
    # sending it directly keeps this test about the dialogue, independent of which texts the model misreads.
    first = conversation.say_text("/nlu_fallback")
    second = conversation.say_text("/nlu_fallback")
    assert "换个说法" in first
    assert "人工" in second
    with session_scope(dialogue_db) as session:
        escalation = session.execute(
            select(Escalation).where(Escalation.sender_id == conversation.sender_id)
        ).scalar_one()
    assert escalation.reason == "repeated_fallback"


def test_keyboard_mashing_is_not_read_as_a_yes(conversation) -> None:
    reply = conversation.say_text("嘀嘀嘀哒哒哒呜呜")
    assert "帮不上忙" in reply or "换个说法" in reply


def test_asking_for_a_person_records_an_escalation(conversation, dialogue_db) -> None:
    assert "人工" in conversation.say_text("转人工")
    with session_scope(dialogue_db) as session:
        escalation = session.execute(
            select(Escalation).where(Escalation.sender_id == conversation.sender_id)
        ).scalar_one()
    assert escalation.reason == "request_human" and escalation.priority == 2


def test_the_bot_goes_quiet_for_a_nurse_keeps_every_message_and_comes_back_when_handed_back(
    conversation, agent, event_loop_for_agent
) -> None:
    from rasa.core.channels.channel import CollectingOutputChannel
    from rasa.shared.core.events import ActionExecuted, ActiveLoop, ConversationResumed

    reply = conversation.say_text("我要找护士")
    assert "前面还有" in reply and "分钟" in reply  # what happens next and how long
    assert conversation.tracker().is_paused()
    assert conversation.say_text("我头有点晕，还在吗") == ""  # no bot answer while a nurse is coming
    assert conversation.say_text("我想挂号") == ""
    texts = [e.text for e in conversation.tracker().events if e.type_name == "user"]
    assert texts[-2:] == ["我头有点晕，还在吗", "我想挂号"]  # but every message is kept
    output = CollectingOutputChannel()

    async def hand_back() -> None:  # what the console does on resolve, through Rasa's HTTP API
        tracker = await agent.processor.fetch_tracker_with_initial_session(conversation.sender_id, output)
        for event in (ConversationResumed(), ActiveLoop(None), ActionExecuted("action_listen")):
            tracker.update(event)
        await agent.processor.save_tracker(tracker)
        await agent.trigger_intent("EXTERNAL_handback", {}, output, tracker)

    event_loop_for_agent.run_until_complete(hand_back())
    assert "护士已结束本次对话" in "\n".join(m.get("text") or "" for m in output.messages)
    assert "姓名" in conversation.say_text("我想挂明天上午心内科的号")  # the bot answers again


def test_opt_out_is_recorded_for_the_channel(conversation, dialogue_db) -> None:
    assert "退订" in conversation.say_text("别再给我发消息了，退订")
    with session_scope(dialogue_db) as session:
        consent = session.execute(select(Consent).where(Consent.external_id == conversation.sender_id)).scalar_one()
    assert consent.opted_in is False and consent.channel == "webchat"


def test_slot_taken_by_someone_else_before_confirming_offers_other_times(conversation, dialogue_db) -> None:
    from bot.crm import booking, patients

    _register(conversation, "韩梅梅", "13711115555", opening="我想挂明天上午的骨科")
    confirm = conversation.say_text("1")
    assert "请确认" in confirm
    chosen = conversation.tracker().get_slot("slot_choice")
    with session_scope(dialogue_db) as session:  # another patient books that slot on another channel
        other = patients.match_or_register(session, "李雷", "+8613711116666")[0]
        booking.book_slot(session, patient_id=other.id, slot_id=int(chosen))
    reply = conversation.say_text("确认")
    assert "被别人约走" in reply and "可预约" in reply
    assert "请确认" in conversation.say_text("1"), "\n".join(conversation.transcript)
    conversation.say_text("确认")
    (mine,) = [a for a in _appointments_of(dialogue_db, "韩梅梅") if a.status == AppointmentStatus.BOOKED]
    assert mine.slot_id != int(chosen)
