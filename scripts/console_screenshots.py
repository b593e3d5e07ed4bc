"""Screenshots of the nurse console over a month of demo data: the README's pictures.

    .venv/bin/python scripts/console_screenshots.py [--out docs/screenshots]

Builds a throwaway CRM and tracker store in a temp dir, fills them with eight demo patients and a month of care
(appointments, care plans, doses, blood-pressure readings, reminders and their deliveries, surveys, triage,
escalations, audit history), serves the console on loopback from a thread, logs in through the real login form in
Debian's Chromium (Playwright) and saves queue.png, conversation.png, dashboard.png and audit.png.
Nothing outside the temp dir and the output directory is touched; Rasa is not needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time as clock_time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from aiohttp import web
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot import clock, config, db, seed
from bot.crm.models import (
    Appointment,
    AppointmentStatus,
    AuditEntry,
    CarePlan,
    ChannelIdentity,
    Consent,
    Delivery,
    DeliveryStatus,
    Doctor,
    Escalation,
    EscalationStatus,
    MeasurementReading,
    MedicationDose,
    OutboxMessage,
    OutboxStatus,
    Patient,
    PatientTag,
    Prescription,
    ScheduleSlot,
    StaffRole,
    StaffUser,
    SurveyAnswer,
    SurveyResponse,
    SurveyStatus,
    TriageRecord,
    utcnow,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "screens-demo-password"
VIEWPORT = {"width": 1360, "height": 860}
TIMEZONE = "Asia/Shanghai"
SEED = 20240611  # the demo data are the same on every run (relative to today)


# ----------------------------------------------------------------------------------------------
# The demo cast
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    key: str
    name: str
    phone: str
    birth: date
    channel: str  # the channel the patient writes on: wechat, sms or voice
    openid: Optional[str] = None

    @property
    def sender_id(self) -> str:
        if self.channel == "wechat" and self.openid:
            return self.openid
        return f"voice:{self.phone}" if self.channel == "voice" else self.phone

    @property
    def address(self) -> str:
        return self.openid if self.channel == "wechat" and self.openid else self.phone


PEOPLE = (
    Person("zhang", "张建国", "+8613800000001", date(1956, 3, 12), "wechat", "oWx3T5kQ9mZp2LrA7bN1cD8eF0gH"),
    Person("li", "李桂兰", "+8613800000002", date(1962, 8, 25), "sms"),
    Person("wang", "王志强", "+8613800000003", date(1971, 11, 2), "wechat", "oWx3T5hR4sLq8VnC2mZ6pK1aJ9tY"),
    Person("liu", "刘淑芬", "+8613800000004", date(1945, 5, 17), "voice"),
    Person("chen", "陈晓明", "+8613800000005", date(1988, 1, 30), "wechat", "oWx3T5bE7uGd3XyW5qH0rN4sM2vF"),
    Person("yang", "杨丽华", "+8613800000006", date(1968, 7, 8), "sms"),
    Person("zhao", "赵德胜", "+8613800000007", date(1952, 12, 21), "wechat", "oWx3T5cJ1kPw6TzB9fD3gL7hQ5xR"),
    Person("huang", "黄雅婷", "+8613800000008", date(1993, 4, 14), "wechat", "oWx3T5dM8nVy2SaF4jK6wE0uP3zC"),
)
BY_KEY = {person.key: person for person in PEOPLE}

# (patient, status, days from today (local), department, local hour)
APPOINTMENTS = (
    ("zhang", AppointmentStatus.COMPLETED, -21, "cardiology", 9),
    ("zhang", AppointmentStatus.BOOKED, 6, "cardiology", 9),
    ("li", AppointmentStatus.COMPLETED, -13, "general_surgery", 10),
    ("li", AppointmentStatus.BOOKED, 1, "general_surgery", 9),
    ("wang", AppointmentStatus.NO_SHOW, -27, "cardiology", 14),
    ("wang", AppointmentStatus.COMPLETED, -15, "endocrinology", 9),
    ("wang", AppointmentStatus.BOOKED, 9, "cardiology", 10),
    ("liu", AppointmentStatus.COMPLETED, -18, "cardiology", 10),
    ("liu", AppointmentStatus.BOOKED, 3, "cardiology", 8),
    ("chen", AppointmentStatus.COMPLETED, -11, "orthopedics", 9),
    ("chen", AppointmentStatus.BOOKED, 3, "orthopedics", 14),
    ("yang", AppointmentStatus.CANCELLED, -6, "endocrinology", 10),
    ("yang", AppointmentStatus.BOOKED, 2, "endocrinology", 9),
    ("zhao", AppointmentStatus.COMPLETED, -24, "cardiology", 15),
    ("zhao", AppointmentStatus.BOOKED, 1, "cardiology", 14),
    ("huang", AppointmentStatus.COMPLETED, -3, "dermatology", 9),
)

# (patient, drug, dose, local times, condition, days since start, days until end or None, source ref)
PRESCRIPTIONS = (
    ("zhang", "苯磺酸氨氯地平片", "5mg 每日1次", ["08:00"], "hypertension", 62, None, "HIS-RX-240311"),
    ("wang", "缬沙坦胶囊", "80mg 每日1次", ["08:00"], "hypertension", 120, None, "HIS-RX-231102"),
    ("wang", "二甲双胍缓释片", "0.5g 每日2次", ["08:00", "20:00"], "diabetes", 90, None, "HIS-RX-240102"),
    ("liu", "硝苯地平控释片", "30mg 每日1次", ["07:30"], "hypertension", 200, None, "HIS-RX-230918"),
    ("yang", "二甲双胍缓释片", "0.5g 每日2次", ["08:00", "20:00"], "diabetes", 75, None, "HIS-RX-240201"),
    ("zhao", "阿司匹林肠溶片", "100mg 每日1次", ["08:00"], None, 24, None, "HIS-RX-240519"),
    ("chen", "塞来昔布胶囊", "0.2g 每日2次", ["08:00", "20:00"], None, 5, 10, "HIS-RX-240606"),
)
# Share of doses taken per ISO week, oldest first (this week last), and each patient's lean.
WEEKLY_ADHERENCE = (0.8, 0.76, 0.87, 0.93, 0.84, 0.9)
PATIENT_LEAN = {"zhang": 0.03, "wang": -0.03, "liu": 0.04, "yang": -0.04, "zhao": 0.02, "chen": 0.0}
# Patients whose doctor books their follow-ups at the clinic desk: no chat booking, so no reminder plan.
DESK_BOOKED = frozenset({"zhang"})

RESOLVED = (  # reason, priority, department, summary, resolution
    (
        "request_human",
        2,
        "general_internal",
        "患者要求人工：复诊前抽血是否需要空腹。",
        "已告知需空腹8小时，帮助预约检验",
    ),
    (
        "abnormal_reading",
        2,
        "cardiology",
        "血压 186/112 mmHg：高血压危象范围（收缩压≥180mmHg）。",
        "电话随访，复测158/96，嘱当日心内科就诊",
    ),
    ("red_flag", 1, "neurology", "疑似卒中：家属说患者“嘴歪，说话不清楚”。", "已指导拨打120，急诊已接诊"),
    ("complaint", 3, None, "投诉：退费流程太慢，跑了三个窗口。", "已转患者服务中心，当日办理退费"),
    (
        "missed_medication",
        2,
        "endocrinology",
        "连续3天未确认服药：二甲双胍缓释片 0.5g。",
        "患者外出忘带药，已提醒按时服药",
    ),
    ("survey_detractor", 3, None, "满意度低分（NPS 4）：“检查结果等太久”。", "已致电致歉并说明报告查询方式"),
    ("repeated_fallback", 3, None, "连续3次未能理解：“核酸报告怎么打印”。", "已人工解答，告知自助机位置"),
    ("missing_reading", 3, "cardiology", "高血压管理：已14天没有收到血压读数。", "血压计损坏，已告知可到社区测量"),
    ("request_human", 2, "general_surgery", "咨询术后伤口换药时间。", "已解答，嘱术后第7天复诊拆线"),
    ("survey_safety", 1, "psychiatry", "PHQ-9 第9题阳性：有伤害自己的念头。", "已电话评估，转精神心理科当日就诊"),
    (
        "request_human",
        2,
        "cardiology",
        "患者要求人工：心脏彩超报告里的“二尖瓣少量反流”是什么意思。",
        "已解释并预约复诊",
    ),
    ("abnormal_reading", 2, "endocrinology", "空腹血糖 3.6 mmol/L：低血糖（≤3.9mmol/L）。", "已指导进食并复测5.8"),
    ("complaint", 3, "dermatology", "投诉：候诊时间超过两小时。", "已致歉，反馈门诊办调整排班"),
    ("request_human", 2, "orthopedics", "咨询骨折术后什么时候可以下地。", "已解答，遵医嘱术后6周复查"),
    ("red_flag", 1, "cardiology", "疑似心源性胸痛：“胸口闷得喘不上气”。", "已指导拨打120，胸痛中心已接诊"),
    ("missed_medication", 2, "cardiology", "连续3天未确认服药：缬沙坦胶囊 80mg。", "患者已服药但忘记回复，已说明"),
    ("request_human", 2, "pediatrics", "家长咨询孩子发烧38.5℃能否先在家观察。", "已指导物理降温，嘱持续发热来院"),
    ("repeated_fallback", 3, None, "连续3次未能理解：“医保卡丢了在哪里补办”。", "已告知社保窗口位置"),
    ("request_human", 2, "obstetrics", "孕妇咨询产检预约改期。", "已帮助改约至下周三"),
    ("abnormal_reading", 2, "cardiology", "心率 46 次/分：心率慢（40–50次/分）。", "电话随访，无不适，嘱复诊查心电图"),
    ("survey_detractor", 3, None, "满意度低分（NPS 3）：“挂号太难了”。", "已致电说明线上预约方式"),
)

TRIAGE_DEPARTMENTS = (  # top department codes and their weights
    ("cardiology", 9),
    ("respiratory", 8),
    ("gastroenterology", 6),
    ("neurology", 5),
    ("orthopedics", 4),
    ("general_internal", 4),
    ("endocrinology", 3),
    ("dermatology", 3),
    ("pediatrics", 3),
    ("ent", 2),
    ("emergency", 2),
)
RED_FLAG_CATEGORIES = ("chest_pain", "stroke", "breathing", "bleeding", "consciousness")

REMINDER_TEXT = {
    "medication_reminder": "{name}您好，到服药时间了：{drug}。服药后回复“已服药”。",
    "bp_request": "{name}您好，请今天测一次血压，直接回复读数，例如“血压135/85”。",
    "glucose_request": "{name}您好，请测一次空腹血糖，直接回复读数，例如“空腹血糖6.2”。",
    "monthly_bp_summary": "{name}，这是您近30天的血压趋势图，供您和医生复诊时参考。",
    "appointment_reminder_24h": "{name}您好，提醒您明天有门诊预约，请带好就诊卡和既往病历。",
    "appointment_reminder_2h": "{name}您好，您的门诊预约在2小时后，请提前15分钟到达签到。",
    "surgery_day1_checkin": "{name}您好，出院第一天感觉怎么样？伤口有没有红肿、渗液或发热？",
    "surgery_day3_wound_care": "{name}您好，术后第3天请保持伤口干燥，按医嘱换药。",
    "surgery_day7_revisit": "{name}您好，术后第7天请回院复诊拆线。",
    "survey_invitation": "{name}您好，想请您花1分钟评价这次就诊。",
}


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------
def point_at(crm_url: str, tracker_url: str) -> None:
    """This process's bot/ on the throwaway databases: set the environment, forget what was read from it."""
    os.environ["DATABASE_URL"] = crm_url
    os.environ["TRACKER_DATABASE_URL"] = tracker_url
    os.environ.setdefault("HOSPITAL_TIMEZONE", TIMEZONE)
    os.environ.pop("HOSPITAL_FAKE_NOW", None)
    clock.now_override = None  # the console runs on the wall clock, so the demo data do too
    for cached in (config.get_settings, db.get_engine, db.get_session_factory):
        cached.cache_clear()


# ----------------------------------------------------------------------------------------------
# Demo data
# ----------------------------------------------------------------------------------------------
class Demo:
    """Fills the CRM with a month of one hospital ward's life, relative to now."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now  # naive UTC
        self.zone = ZoneInfo(config.get_settings().timezone)
        self.today = clock.from_db(now, self.zone.key).date()
        self.rng = random.Random(SEED)
        self.patients: Dict[str, Patient] = {}
        self.staff: Dict[str, StaffUser] = {}
        self.used_slots: Set[int] = set()
        self.appointments: Dict[str, List[Tuple[Appointment, ScheduleSlot]]] = {}
        self.prescriptions: Dict[str, List[Prescription]] = {}
        self.plans: Dict[str, List[CarePlan]] = {}
        self.audit: List[AuditEntry] = []
        self.debt: Dict[int, float] = {}  # missed doses owed per week (error diffusion)

    # --- time helpers ------------------------------------------------------------------------------
    def at(self, day: date, hour: int, minute: int = 0) -> datetime:
        """Naive UTC of a local wall-clock time."""
        return clock.to_db(datetime.combine(day, time(hour, minute), tzinfo=self.zone))

    def day(self, offset: int) -> date:
        return self.today + timedelta(days=offset)

    def weeks_ago(self, moment: datetime) -> int:
        """How many local ISO weeks before this one a time falls (0: this week)."""
        local = clock.from_db(moment, self.zone.key).date()
        monday = local - timedelta(days=local.weekday())
        this_monday = self.today - timedelta(days=self.today.weekday())
        return (this_monday - monday).days // 7

    def weekly(self, values: Sequence[float], moment: datetime) -> float:
        """The entry of a per-week series (oldest first, this week last) a time falls in."""
        return values[max(0, len(values) - 1 - self.weeks_ago(moment))]

    def minutes_ago(self, minutes: float) -> datetime:
        return (self.now - timedelta(minutes=minutes)).replace(microsecond=0)

    def daytime(self, offset: int) -> datetime:
        """A random moment of a working day `offset` days from today, in the past."""
        moment = self.at(self.day(offset), self.rng.randint(8, 20), self.rng.randint(0, 59))
        return min(moment, self.minutes_ago(90))

    # --- people ------------------------------------------------------------------------------------
    def people(self) -> None:
        from console import auth

        self.staff["nurse"] = auth.create_user(
            self.session,
            "nurse",
            PASSWORD,
            display_name="王护士",
            department_code="cardiology",
            phone="+8613900000009",
            on_call=True,
        )
        self.staff["nurse2"] = auth.create_user(self.session, "nurse2", PASSWORD, display_name="李护士")
        self.staff["admin"] = auth.create_user(
            self.session, "admin", PASSWORD, role=StaffRole.ADMIN, display_name="管理员"
        )
        for number, person in enumerate(PEOPLE):
            patient = Patient(
                card_no=f"MZ24{60310 + number * 137:06d}",
                name=person.name,
                phone=person.phone,
                birth_date=person.birth,
                created_at=self.now - timedelta(days=400 - number * 31),
            )
            self.session.add(patient)
            self.session.flush()
            self.patients[person.key] = patient
            identities = [("sms", person.phone)]
            if person.openid:
                identities.append(("wechat", person.openid))
            if person.channel == "voice":
                identities.append(("voice", person.phone))
            for channel, external_id in identities:
                self.session.add(ChannelIdentity(patient_id=patient.id, channel=channel, external_id=external_id))
                opted_in = not (person.key == "huang" and channel == "sms")  # she asked for WeChat only (退订短信)
                self.session.add(
                    Consent(patient_id=patient.id, channel=channel, external_id=external_id, opted_in=opted_in)
                )
        for key, tag, who in (
            ("zhang", "高血压随访", "nurse"),
            ("zhang", "独居", "nurse2"),
            ("liu", "行动不便", "nurse"),
            ("liu", "需家属陪同", "nurse"),
            ("yang", "糖尿病教育", "nurse2"),
        ):
            self.session.add(
                PatientTag(
                    patient_id=self.patients[key].id,
                    tag=tag,
                    created_by=who,
                    created_at=self.now - timedelta(days=self.rng.randint(3, 40)),
                )
            )
        self.session.flush()

    # --- appointments --------------------------------------------------------------------------------
    def slot(self, department: str, day: date, hour: int, past: bool) -> ScheduleSlot:
        """A free seeded slot of the department nearest the local day and hour (in the past for a past visit):
        the first one after it, else the last one before it (a doctor may not work that day)."""
        target = self.at(day, hour)
        edge = self.now - timedelta(hours=3) if past else self.now + timedelta(hours=3)
        base = (
            select(ScheduleSlot)
            .join(Doctor, Doctor.id == ScheduleSlot.doctor_id)
            .where(Doctor.department_code == department)
            .where(ScheduleSlot.start_at < edge if past else ScheduleSlot.start_at > edge)
        )
        later = base.where(ScheduleSlot.start_at >= target).order_by(ScheduleSlot.start_at, ScheduleSlot.id)
        earlier = base.where(ScheduleSlot.start_at < target).order_by(ScheduleSlot.start_at.desc(), ScheduleSlot.id)
        for query in (later, earlier):
            for slot in self.session.execute(query.limit(50)).scalars():
                if slot.id not in self.used_slots:
                    self.used_slots.add(slot.id)
                    return slot
        raise RuntimeError(f"no seeded {department} slot near {day}")

    def visits(self) -> None:
        for key, status, offset, department, hour in APPOINTMENTS:
            past = status != AppointmentStatus.BOOKED
            slot = self.slot(department, self.day(offset), hour, past)
            booked_at = slot.start_at - timedelta(days=self.rng.randint(2, 9), hours=self.rng.randint(0, 8))
            appointment = Appointment(
                patient_id=self.patients[key].id,
                slot_id=slot.id,
                status=status,
                channel=None
                if key in DESK_BOOKED
                else ("sms" if BY_KEY[key].channel == "voice" else BY_KEY[key].channel),
                created_at=min(booked_at, self.now - timedelta(hours=5)),
                cancelled_at=slot.start_at - timedelta(days=1) if status == AppointmentStatus.CANCELLED else None,
            )
            self.session.add(appointment)
            self.session.flush()
            self.appointments.setdefault(key, []).append((appointment, slot))

    # --- medication and care plans -------------------------------------------------------------------
    def medication(self) -> None:
        for key, drug, dose, times, condition, since, until, ref in PRESCRIPTIONS:
            start = self.at(self.day(-since), 0)
            prescription = Prescription(
                patient_id=self.patients[key].id,
                drug=drug,
                dose=dose,
                times=times,
                start_date=start,
                end_date=self.at(self.day(until), 0) if until else None,
                condition=condition,
                source_ref=ref,
                created_at=start - timedelta(hours=6),
            )
            self.session.add(prescription)
            self.session.flush()
            self.prescriptions.setdefault(key, []).append(prescription)
            for offset in range(-30, 1):
                for local_time in times:
                    hour, minute = (int(part) for part in local_time.split(":"))
                    scheduled = self.at(self.day(offset), hour, minute)
                    if scheduled < start or scheduled > self.now:
                        continue
                    self.session.add(self.dose(key, prescription, scheduled))
        self.session.flush()

    def dose(self, key: str, prescription: Prescription, scheduled: datetime) -> MedicationDose:
        waited = self.now - scheduled
        if waited < timedelta(hours=2):
            status = "due"  # the reminder went out; no answer yet
        elif key == "yang" and waited < timedelta(days=3):
            status = "missed"  # three days without a confirmed dose: her missed_medication escalation
        else:
            # error diffusion: each week comes out at its rate whatever the number of doses
            week = self.weeks_ago(scheduled)
            rate = self.weekly(WEEKLY_ADHERENCE, scheduled) + PATIENT_LEAN.get(key, 0.0)
            debt = self.debt.get(week, 0.5) + 1 - rate
            status = "missed" if debt >= 1 else "taken"
            self.debt[week] = debt - 1 if status == "missed" else debt
        taken_at = scheduled + timedelta(minutes=self.rng.randint(2, 55)) if status == "taken" else None
        reasked = scheduled + timedelta(hours=1) if status == "missed" else None
        return MedicationDose(
            prescription_id=prescription.id,
            patient_id=self.patients[key].id,
            scheduled_at=scheduled,
            status=status,
            taken_at=taken_at,
            reasked_at=reasked,
        )

    def care_plans(self) -> None:
        for key, prescriptions in self.prescriptions.items():
            for prescription in prescriptions:
                if prescription.condition:
                    self.plan(
                        key,
                        prescription.condition,
                        prescription.start_date,
                        "prescription",
                        prescription.source_ref,
                        {"drug": prescription.drug, "dose": prescription.dose, "times": prescription.times},
                    )
        self.plan(
            "li",
            "after_surgery",
            self.at(self.day(-6), 15),
            "discharge",
            "HIS-ADT-88213",
            {"procedure": "腹腔镜胆囊切除术"},
        )
        self.plan(
            "chen",
            "after_surgery",
            self.at(self.day(-4), 11),
            "discharge",
            "HIS-ADT-88297",
            {"procedure": "右桡骨远端骨折切开复位内固定术"},
        )
        for key, visits in self.appointments.items():
            for appointment, slot in visits:
                if appointment.channel is None:
                    continue  # booked at the desk, not through the assistant
                self.plan(
                    key,
                    "appointment_reminders",
                    slot.start_at,
                    "appointment",
                    f"appointment:{appointment.id}",
                    {"appointment_id": appointment.id, "doctor": slot.doctor.name},
                    active=appointment.status == AppointmentStatus.BOOKED,
                )
        self.session.flush()

    def plan(
        self,
        key: str,
        template: str,
        anchor: datetime,
        source: str,
        ref: str,
        params: Dict[str, Any],
        active: bool = True,
    ) -> CarePlan:
        plan = CarePlan(
            patient_id=self.patients[key].id,
            template=template,
            anchor_at=anchor,
            source=source,
            source_ref=ref,
            params=params,
            active=active,
            expanded_until=self.now + timedelta(days=7),
            created_at=min(anchor, self.now - timedelta(hours=1)),
        )
        self.session.add(plan)
        self.session.flush()
        self.plans.setdefault(key, []).append(plan)
        return plan

    # --- readings --------------------------------------------------------------------------------------
    def readings(self) -> None:
        # Mr Zhang's blood pressure comes down after last month's dose change: ~150/95 to ~132/84.
        for offset in range(-30, 0):
            if offset != -1 and self.rng.random() < 0.2:
                continue  # some mornings he forgets
            progress = (offset + 30) / 29
            systolic = round(151 - 17 * progress + self.rng.uniform(-3, 3))
            diastolic = round(95 - 10 * progress + self.rng.uniform(-2, 2))
            if offset == -1:
                systolic, diastolic = 135, 86  # what he quotes in the chat
            taken = self.at(self.day(offset), 7, self.rng.randint(10, 40))
            self.reading("zhang", "blood_pressure", {"systolic": systolic, "diastolic": diastolic}, "mmHg", taken)
        self.reading("zhang", "blood_pressure", {"systolic": 132, "diastolic": 84}, "mmHg", self.minutes_ago(13))
        # Mr Wang's readings stopped 16 days ago (his missing_reading escalation); glucose still comes in.
        for offset in range(-30, -15, 2):
            values = {"systolic": self.rng.randint(138, 146), "diastolic": self.rng.randint(86, 92)}
            self.reading("wang", "blood_pressure", values, "mmHg", self.at(self.day(offset), 8, 5))
        for offset in range(-28, 0, 3):
            value = round(self.rng.uniform(6.4, 8.1), 1)
            self.reading("wang", "glucose", {"value": value}, "mmol/L", self.at(self.day(offset), 7, 30))
        # Mrs Liu reports by phone; this morning's reading is in the crisis range.
        for offset in range(-28, 0, 4):
            values = {"systolic": self.rng.randint(148, 162), "diastolic": self.rng.randint(88, 96)}
            self.reading("liu", "blood_pressure", values, "mmHg", self.at(self.day(offset), 9, 15), source="voice")
        self.reading(
            "liu",
            "blood_pressure",
            {"systolic": 182, "diastolic": 106},
            "mmHg",
            self.minutes_ago(16),
            source="voice",
            level=3,
        )
        for offset in range(-27, 0, 3):
            value = round(self.rng.uniform(6.8, 9.4), 1)
            self.reading("yang", "glucose", {"value": value}, "mmol/L", self.at(self.day(offset), 7, 20))
        self.session.flush()

    def reading(
        self,
        key: str,
        kind: str,
        value: Dict[str, float],
        unit: str,
        taken: datetime,
        source: str = "chat",
        level: Optional[int] = None,
    ) -> None:
        self.session.add(
            MeasurementReading(
                patient_id=self.patients[key].id,
                kind=kind,
                value=value,
                unit=unit,
                taken_at=taken,
                source=source,
                level=level,
                created_at=taken + timedelta(minutes=1),
            )
        )

    # --- reminders: outbox rows and their deliveries --------------------------------------------------
    def reminders(self) -> None:
        for key, plans in self.plans.items():
            for plan in plans:
                for step, message, due in self.due_steps(key, plan):
                    self.push(key, plan, step, message, due)
        self.session.flush()

    def due_steps(self, key: str, plan: CarePlan) -> Iterator[Tuple[str, str, datetime]]:
        """(step, message, due time) of a plan over the last month and the next week, as the scheduler expands."""
        if plan.template in ("hypertension", "diabetes"):
            for offset in range(-30, 8):
                for local_time in plan.params["times"]:
                    hour, minute = (int(part) for part in local_time.split(":"))
                    yield "medication", "medication_reminder", self.at(self.day(offset), hour, minute)
            if plan.template == "hypertension":
                for offset in range(-28, 8, 7):
                    yield "bp_request", "bp_request", self.at(self.day(offset), 8, 30)
                yield "monthly_summary", "monthly_bp_summary", self.at(self.day(-12), 19)
            else:
                for offset in range(-29, 8, 3):
                    yield "glucose_request", "glucose_request", self.at(self.day(offset), 7, 30)
        elif plan.template == "after_surgery":
            anchor_day = clock.from_db(plan.anchor_at, self.zone.key).date()
            for step, message, days, hour in (
                ("day1_checkin", "surgery_day1_checkin", 1, 10),
                ("day3_wound_care", "surgery_day3_wound_care", 3, 10),
                ("day7_revisit", "surgery_day7_revisit", 7, 9),
                ("day30_survey", "survey_invitation", 30, 10),
            ):
                yield step, message, self.at(anchor_day + timedelta(days=days), hour)
        elif plan.template == "appointment_reminders":
            yield "before_24h", "appointment_reminder_24h", plan.anchor_at - timedelta(hours=24)
            yield "before_2h", "appointment_reminder_2h", plan.anchor_at - timedelta(hours=2)

    def push(self, key: str, plan: CarePlan, step: str, message: str, due: datetime) -> None:
        if due < self.now - timedelta(days=30) or due > self.now + timedelta(days=7):
            return
        person = BY_KEY[key]
        cancelled = any(
            appointment.status == AppointmentStatus.CANCELLED and f"appointment:{appointment.id}" == plan.source_ref
            for appointment, _ in self.appointments.get(key, [])
        )
        row = OutboxMessage(
            patient_id=plan.patient_id,
            plan_id=plan.id,
            step=step,
            message=message,
            params={"name": person.name, **({"drug": plan.params["drug"]} if "drug" in plan.params else {})},
            channel_policy="wechat,sms,voice" if person.channel != "voice" else "voice,sms",
            urgent=step == "before_2h",
            due_at=due,
            next_attempt_at=due,
            idempotency_key=f"plan:{plan.id}:{step}:{due.isoformat()}",
            created_at=min(due - timedelta(days=1), self.now),
        )
        self.session.add(row)
        self.session.flush()
        if due > self.now - timedelta(minutes=20):
            row.status = OutboxStatus.PENDING  # not due yet, or being picked up now
            return
        if cancelled:
            row.status = OutboxStatus.CANCELLED
            return
        roll = self.rng.random()
        if roll < 0.05:
            row.status, row.last_error = OutboxStatus.SKIPPED, "患者已退订该渠道"
            self.delivery(key, person.channel, row, DeliveryStatus.SKIPPED, error="no consent")
            return
        row.attempts = 1
        first = person.channel
        if roll < 0.09:  # every channel refused or unanswered
            row.status, row.last_error, row.attempts = OutboxStatus.FAILED, "所有渠道均未送达", 3
            failed = self.delivery(key, first, row, DeliveryStatus.FAILED, error="provider error")
            fallback = "voice" if first == "sms" else "sms"
            self.delivery(key, fallback, row, DeliveryStatus.UNDELIVERED, fallback_of=failed, error="handset off")
            return
        row.status, row.sent_at = OutboxStatus.SENT, due + timedelta(seconds=self.rng.randint(2, 90))
        if first == "wechat" and roll < 0.2:  # the 48-hour window closed: WeChat refuses, SMS takes it
            failed = self.delivery(key, "wechat", row, DeliveryStatus.FAILED, error="response out of time limit")
            row.delivery_id = self.delivery(key, "sms", row, DeliveryStatus.DELIVERED, fallback_of=failed).id
            row.channel = "sms"
            return
        if first == "voice":
            status = DeliveryStatus.DELIVERED if roll < 0.85 else DeliveryStatus.SENT
        elif first == "sms":
            status = (
                DeliveryStatus.DELIVERED
                if roll < 0.82
                else (DeliveryStatus.UNDELIVERED if roll < 0.88 else DeliveryStatus.SENT)
            )
        else:
            status = DeliveryStatus.SENT  # WeChat gives no receipts
        row.delivery_id = self.delivery(key, first, row, status).id
        row.channel = first

    def delivery(
        self,
        key: str,
        channel: str,
        row: OutboxMessage,
        status: DeliveryStatus,
        fallback_of: Optional[Delivery] = None,
        error: Optional[str] = None,
    ) -> Delivery:
        person = BY_KEY[key]
        address = person.openid if channel == "wechat" and person.openid else person.phone
        kind = {"wechat": "template", "sms": "sms", "voice": "call"}[channel]
        text = REMINDER_TEXT.get(row.message, "{name}您好，这是医院的随访提醒。").format(
            name=person.name, drug=row.params.get("drug", "")
        )
        created = row.due_at + timedelta(seconds=self.rng.randint(1, 30) + (60 if fallback_of else 0))
        codes = {"response out of time limit": "45015", "provider error": "30008", "handset off": "30003"}
        delivery = Delivery(
            patient_id=row.patient_id,
            channel=channel,
            address=address,
            kind=kind if status != DeliveryStatus.SKIPPED else "none",
            purpose="reminder",
            body=text,
            status=status,
            provider_message_id=None if status == DeliveryStatus.SKIPPED else self.message_id(channel),
            error_code=codes.get(error or ""),
            error=error,
            fallback_of_id=fallback_of.id if fallback_of else None,
            created_at=created,
            updated_at=created + timedelta(seconds=20),
        )
        self.session.add(delivery)
        self.session.flush()
        return delivery

    def message_id(self, channel: str) -> str:
        """A provider's id for a message: a WeChat msgid, a Twilio SM… or CA… sid."""
        if channel == "wechat":
            return str(self.rng.randint(10**18, 10**19 - 1))
        return ("CA" if channel == "voice" else "SM") + f"{self.rng.getrandbits(128):032x}"

    # --- surveys -----------------------------------------------------------------------------------------
    def surveys(self) -> None:
        """Satisfaction surveys after visits; weekly means and NPS wander like a real ward's."""
        weekly_mood = (4.2, 4.1, 4.4, 4.0, 4.5, 4.3)  # mean rating, oldest week first
        comments = (
            "医生很耐心，讲得很清楚",
            "护士态度很好",
            "候诊时间有点长",
            "没有",
            "环境干净，指示清楚",
            "希望能多开放一些线上号源",
            "抽血排队太久了",
            "没有",
        )
        fixed = {"huang": -3, "zhang": -20}
        # a week only a day or two old would plot a few answers as a wild NPS swing: leave it to next week
        days = [-n for n in range(1, 30) if self.today.weekday() >= 3 or self.weeks_ago(self.at(self.day(-n), 12))]
        for index in range(32):
            key = PEOPLE[index % len(PEOPLE)].key
            offset = fixed.pop(key, None) or self.rng.choice(days)
            completed = self.daytime(offset)
            mood = self.weekly(weekly_mood, completed)
            comment = self.rng.choice(comments)
            if key == "huang" and offset == -3:  # the two-hour wait of her complaint
                mood, comment = 2.2, "挂的9点的号，10点20还没叫到，候诊时间太长了"
            self.survey(key, completed, mood, comment)
        self.session.flush()

    def survey(self, key: str, completed: datetime, mood: float, comment: str) -> None:
        person = BY_KEY[key]
        started = completed - timedelta(minutes=self.rng.randint(2, 6))
        visit = next((a for a, _ in self.appointments.get(key, []) if a.status == AppointmentStatus.COMPLETED), None)
        response = SurveyResponse(
            patient_id=self.patients[key].id,
            sender_id=person.sender_id,
            channel=person.channel if person.channel != "voice" else "sms",
            instrument="satisfaction",
            status=SurveyStatus.COMPLETED,
            trigger="scheduler",
            appointment_id=visit.id if visit else None,
            started_at=started,
            updated_at=completed,
            completed_at=completed,
        )
        self.session.add(response)
        self.session.flush()
        moment = started
        for item in ("doctor", "nurse", "waiting", "environment"):
            moment += timedelta(seconds=self.rng.randint(15, 50))
            rating = min(5, max(1, round(self.rng.gauss(mood - (0.6 if item == "waiting" else 0), 0.6))))
            self.session.add(SurveyAnswer(response_id=response.id, item=item, value=rating, answered_at=moment))
        moment += timedelta(seconds=30)
        score = min(10, max(0, round(self.rng.gauss(2 * mood - 0.2, 1.5))))
        self.session.add(SurveyAnswer(response_id=response.id, item="nps", value=score, answered_at=moment))
        skipped = comment == "没有"
        self.session.add(
            SurveyAnswer(
                response_id=response.id,
                item="comment",
                text=None if skipped else comment,
                skipped=skipped,
                answered_at=completed,
            )
        )

    # --- triage ------------------------------------------------------------------------------------------
    def triage(self) -> None:
        codes = [code for code, _ in TRIAGE_DEPARTMENTS]
        weights = [weight for _, weight in TRIAGE_DEPARTMENTS]
        for _ in range(58):
            level = self.rng.choices((1, 2, 3, 4), weights=(2, 7, 19, 15))[0]
            top = "emergency" if level == 1 and self.rng.random() < 0.5 else self.rng.choices(codes, weights)[0]
            others = self.rng.sample([code for code in codes if code != top], self.rng.randint(0, 2))
            score = round(self.rng.uniform(0.55, 0.92), 2)
            departments = [{"code": top, "score": score}] + [
                {"code": code, "score": round(score * self.rng.uniform(0.3, 0.8), 2)} for code in others
            ]
            person = self.rng.choice(PEOPLE) if self.rng.random() < 0.6 else None
            self.session.add(
                TriageRecord(
                    patient_id=self.patients[person.key].id if person else None,
                    sender_id=person.sender_id if person else f"web-{self.rng.getrandbits(40):010x}",
                    level=level,
                    categories=[self.rng.choice(RED_FLAG_CATEGORIES)] if level <= 2 else [],
                    departments=departments,
                    created_at=self.daytime(-self.rng.randint(0, 29)),
                )
            )
        self.session.flush()

    # --- escalations -------------------------------------------------------------------------------------
    def escalations(self) -> int:
        """The month's resolved escalations and today's queue; returns the id of Mr Zhang's (the screenshot)."""
        nurses = [self.staff["nurse"], self.staff["nurse2"]]
        offsets = sorted(self.rng.sample(range(1, 30), len(RESOLVED)), reverse=True)
        for (reason, priority, department, summary, resolution), offset in zip(RESOLVED, offsets):
            person = self.rng.choice(PEOPLE)
            created = self.daytime(-offset)
            speed = 1.6 if self.weeks_ago(created) >= 3 else 1.0  # the first weeks were slower
            low, high = {1: (1, 4), 2: (3, 11), 3: (6, 30)}[priority]
            claimed = created + timedelta(minutes=self.rng.uniform(low, high) * speed)
            resolved = claimed + timedelta(minutes=self.rng.randint(6, 40))
            nurse = self.rng.choice(nurses)
            registered = reason != "repeated_fallback"
            escalation = Escalation(
                patient_id=self.patients[person.key].id if registered else None,
                sender_id=person.sender_id if registered else f"web-{self.rng.getrandbits(40):010x}",
                channel=person.channel if registered else "webchat",
                reason=reason,
                priority=priority,
                summary=summary,
                status=EscalationStatus.RESOLVED,
                created_at=created,
                department_code=department,
                pauses_bot=reason in ("request_human", "complaint", "red_flag", "crisis"),
                claimed_by_id=nurse.id,
                claimed_at=claimed.replace(microsecond=0),
                resolved_by_id=nurse.id,
                resolved_at=resolved.replace(microsecond=0),
                resolution=resolution,
            )
            self.session.add(escalation)
            self.session.flush()
            self.history_of(escalation, nurse)
        active = (  # (patient or None, reason, priority, department, minutes ago, summary)
            (
                "zhao",
                "red_flag",
                1,
                "cardiology",
                11,
                "疑似心源性胸痛：患者说“胸口像压了块石头，出冷汗，已经二十多分钟了”。已提示立即拨打120。",
            ),
            (
                "zhang",
                "request_human",
                2,
                "cardiology",
                8.5,
                "患者要求人工：血压 132/84 mmHg（较上月下降），近两天晨起站立时头晕、眼前发黑，"
                "询问是否与降压药（氨氯地平 5mg）有关。",
            ),
            (
                "liu",
                "abnormal_reading",
                2,
                "cardiology",
                15,
                "语音上报血压 182/106 mmHg：高血压危象范围（收缩压≥180mmHg），否认头痛胸闷。",
            ),
            (
                "yang",
                "missed_medication",
                2,
                "endocrinology",
                6,
                "连续3天未确认服药：二甲双胍缓释片 0.5g（每日2次）。",
            ),
            (
                "huang",
                "complaint",
                3,
                "dermatology",
                26,
                "投诉：皮肤科候诊超过两小时，挂的是9:00的号，10:20还没叫到。",
            ),
            (
                None,
                "repeated_fallback",
                3,
                None,
                33,
                "连续3次未能理解：“医保卡丢了在哪里补办”“异地医保能报销吗”。",
            ),
            (
                "wang",
                "missing_reading",
                3,
                "cardiology",
                47,
                "高血压管理：已16天没有收到血压读数（血糖仍按时上报）。",
            ),
        )
        screenshot_id = 0
        for key, reason, priority, department, minutes, summary in active:
            person = BY_KEY[key] if key else None
            created = self.minutes_ago(minutes)
            escalation = Escalation(
                patient_id=self.patients[key].id if key else None,
                sender_id=person.sender_id if person else "web-3fa91c27d0",
                channel=person.channel if person else "webchat",
                reason=reason,
                priority=priority,
                summary=summary,
                status=EscalationStatus.OPEN,
                created_at=created,
                department_code=department,
                pauses_bot=reason in ("request_human", "complaint", "red_flag", "crisis"),
            )
            if key == "liu":  # the second nurse is already on the phone with her
                escalation.status = EscalationStatus.CLAIMED
                escalation.claimed_by_id = self.staff["nurse2"].id
                escalation.claimed_at = created + timedelta(minutes=3)
            self.session.add(escalation)
            self.session.flush()
            self.log(
                created, "assistant", "create", "escalation", escalation.id, escalation.patient_id, {"reason": reason}
            )
            if escalation.claimed_at:
                self.log(escalation.claimed_at, "nurse2", "claim", "escalation", escalation.id, escalation.patient_id)
                self.log(escalation.claimed_at, "nurse2", "view", "conversation", escalation.id, escalation.patient_id)
            if key == "zhang":
                screenshot_id = escalation.id
        return screenshot_id

    # --- audit history -----------------------------------------------------------------------------------
    def log(
        self,
        at: datetime,
        actor: str,
        action: str,
        entity: str,
        entity_id: object,
        patient_id: Optional[int] = None,
        detail: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.audit.append(
            AuditEntry(
                at=at.replace(microsecond=0),
                actor=actor,
                action=action,
                entity=entity,
                entity_id=str(entity_id),
                patient_id=patient_id,
                detail=detail,
            )
        )

    def history_of(self, escalation: Escalation, nurse: StaffUser) -> None:
        """What the audit log holds about a resolved escalation: created, claimed, read, answered, resolved."""
        patient = escalation.patient_id
        self.log(
            escalation.created_at,
            "assistant",
            "create",
            "escalation",
            escalation.id,
            patient,
            {"reason": escalation.reason},
        )
        self.log(
            escalation.claimed_at - timedelta(seconds=40),
            nurse.username,
            "view",
            "queue",
            "all",
            detail={"escalations": [escalation.id]},
        )
        self.log(escalation.claimed_at, nurse.username, "claim", "escalation", escalation.id, patient)
        self.log(
            escalation.claimed_at + timedelta(seconds=2), nurse.username, "view", "conversation", escalation.id, patient
        )
        if patient and self.rng.random() < 0.4:
            self.log(
                escalation.claimed_at + timedelta(seconds=20),
                nurse.username,
                "view",
                "readings",
                "blood_pressure",
                patient,
            )
        for reply in range(self.rng.randint(1, 3)):
            self.log(
                escalation.claimed_at + timedelta(minutes=2 + 4 * reply),
                nurse.username,
                "reply",
                "conversation",
                escalation.id,
                patient,
                {"channel": escalation.channel, "chars": self.rng.randint(30, 160)},
            )
        self.log(escalation.resolved_at, nurse.username, "resolve", "escalation", escalation.id, patient)

    def audit_history(self) -> None:
        for offset in range(-29, 0):
            for username in ("nurse", "nurse2"):
                if self.rng.random() < 0.85:
                    login = self.at(self.day(offset), 7 + self.rng.randint(0, 1), self.rng.randint(30, 59))
                    self.log(login, username, "login", "staff", self.staff[username].id)
            if offset % 7 == 0:
                self.log(self.at(self.day(offset), 17, 40), "admin", "login", "staff", self.staff["admin"].id)
                self.log(self.at(self.day(offset), 17, 42), "admin", "view", "dashboard", 30)
        self.log(self.minutes_ago(95), "nurse2", "login", "staff", self.staff["nurse2"].id)
        self.log(self.minutes_ago(80), "wanghs", "login_failed", "staff", "-")
        for entry in sorted(self.audit, key=lambda entry: entry.at):
            self.session.add(entry)  # in time order: the audit page sorts by id
        self.session.flush()


# ----------------------------------------------------------------------------------------------
# The conversation of the screenshot (Rasa's tracker store)
# ----------------------------------------------------------------------------------------------
def add_event(engine: Engine, sender_id: str, kind: str, data: Dict[str, Any], at: datetime) -> None:
    """One row of Rasa's SQLTrackerStore `events` table, as Rasa writes it."""
    from console.conversations import EVENTS

    stamp = at.replace(tzinfo=ZoneInfo("UTC")).timestamp()
    intent = ((data.get("parse_data") or {}).get("intent") or {}).get("name") if kind == "user" else None
    with engine.begin() as connection:
        connection.execute(
            insert(EVENTS).values(
                sender_id=sender_id,
                type_name=kind,
                timestamp=stamp,
                intent_name=intent,
                action_name=data.get("name") if kind == "action" else None,
                data=json.dumps({"event": kind, "timestamp": stamp, **data}, ensure_ascii=False),
            )
        )


def patient_says(engine: Engine, sender_id: str, text: str, intent: str, at: datetime) -> None:
    add_event(
        engine,
        sender_id,
        "user",
        {
            "text": text,
            "input_channel": "wechat",
            "parse_data": {"intent": {"name": intent, "confidence": 0.97}, "text": text},
        },
        at,
    )


def bot_says(engine: Engine, sender_id: str, text: str, at: datetime) -> None:
    add_event(engine, sender_id, "bot", {"text": text, "data": {}, "metadata": {}}, at)


def conversation(engine: Engine, demo: Demo) -> str:
    """Mr Zhang on WeChat: yesterday's dose confirmed, today's reading, dizziness, a nurse asked for, paused."""
    zhang = BY_KEY["zhang"]
    sender = zhang.sender_id
    yesterday = demo.at(demo.day(-1), 8)
    bot_says(engine, sender, "张建国您好，到服药时间了：苯磺酸氨氯地平片 5mg。服药后回复“已服药”。", yesterday)
    patient_says(engine, sender, "已服药", "medication_taken", yesterday + timedelta(minutes=6))
    bot_says(engine, sender, "好的，已记录您按时服药，继续保持！", yesterday + timedelta(minutes=6, seconds=2))
    steps: Sequence[Tuple[float, str, str, Optional[str]]] = (
        (13.0, "user", "刚量的血压132/84，昨天早上是135/86。", "report_measurement"),
        (12.95, "bot", "已记录：血压 132/84 mmHg。谢谢！如有头痛、胸闷、视物模糊等不适，请及时就医。", None),
        (
            8.6,
            "user",
            "血压是降了，可这两天早上一站起来就头晕、眼前发黑，是不是药吃多了？我想问问护士",
            "request_human",
        ),
        (
            8.55,
            "bot",
            "好的，已为您转接人工服务。您前面还有 1 位在等待，预计约 6 分钟内护士会在这里回复您。"
            "等待期间您发的每条消息护士都能看到，可以先把情况写下来。如情况紧急，请立即拨打 120 或前往急诊。",
            None,
        ),
        (8.5, "pause", "", None),
        (5.0, "user", "我吃的是氨氯地平5毫克，每天早上一片，上个月医生加的量。头晕时不胸闷，也不头痛。", "inform"),
    )
    for minutes, kind, text, intent in steps:
        at = demo.minutes_ago(minutes)
        if kind == "user":
            patient_says(engine, sender, text, intent or "inform", at)
        elif kind == "bot":
            bot_says(engine, sender, text, at)
        else:
            add_event(engine, sender, "pause", {}, at)
    return sender


NURSE_REPLY = (
    "张先生您好，我是王护士。血压降到130左右说明药起效了，起床头晕可能是体位性低血压：醒来先坐一两分钟再慢慢站起。"
    "请不要自行停药或减量，这两天早晚各量一次血压发给我，我转告您的主治医生。如有胸闷、说话不清或晕倒，请立即拨打120。"
)


# ----------------------------------------------------------------------------------------------
# Serving and photographing
# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread with its own event loop."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(20):
        raise RuntimeError("the console did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def login(browser: Any, url: str, username: str) -> Any:
    """A fresh browser context logged in through the console's own login form."""
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id=TIMEZONE)
    page = context.new_page()
    page.goto(f"{url}/")
    page.wait_for_selector("#login")  # not logged in: the console sends us to /login
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#queue")
    return page


def settle(page: Any) -> None:
    """Wait until every request (charts included) is done and every image has decoded."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function("[...document.images].every((image) => image.complete)")
    broken = page.eval_on_selector_all("img", "images => images.filter(i => !i.naturalWidth).map(i => i.src)")
    if broken:
        raise RuntimeError(f"images that did not load: {broken}")


# The patient panel scrolls inside 80% of the window, too short for all of it at 1360x860: scroll it to the
# appointments, so the care plans, adherence, readings and the readings chart below them are in view too.
SHOW_CARE = """() => {
  const panel = document.querySelector(".panel");
  const chart = panel && panel.querySelector("img.chart");
  const heading = [...panel.querySelectorAll("h2")].find((h) => h.textContent.trim() === "预约");
  if (!chart || !heading) return false;
  const top = (node) => node.getBoundingClientRect().top - panel.getBoundingClientRect().top + panel.scrollTop;
  const chartBottom = top(chart) + chart.getBoundingClientRect().height;
  panel.scrollTop = Math.min(top(heading) - 12, chartBottom + 4 - panel.clientHeight);
  return top(chart) >= panel.scrollTop && top(chart) + 100 <= panel.scrollTop + panel.clientHeight;
}"""


def shoot(page: Any, path: Path) -> Path:
    settle(page)
    page.screenshot(path=str(path), full_page=True)
    return path


def photograph(url: str, out: Path, world: World) -> List[Path]:
    from playwright.sync_api import sync_playwright

    written: List[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            nurse = login(browser, url, "nurse")
            written.append(shoot(nurse, out / "queue.png"))

            # Mr Zhang's chat: claim it from the queue (接手), then the reply arrives in the live view.
            nurse.click(f'#queue tr[data-id="{world.escalation_id}"] button.claim')
            nurse.wait_for_selector("#reply-text")
            reply = {"text": NURSE_REPLY, "metadata": {"nurse": "王护士", "nurse_id": world.nurse_id}}
            add_event(world.tracker, world.sender_id, "bot", reply, utcnow())
            nurse.wait_for_selector("#turns li.nurse", timeout=15000)
            settle(nurse)
            if not nurse.evaluate(SHOW_CARE):
                raise RuntimeError("the patient panel's readings chart is not in view")
            written.append(shoot(nurse, out / "conversation.png"))

            nurse.goto(f"{url}/dashboard")
            nurse.wait_for_selector(".charts img")
            written.append(shoot(nurse, out / "dashboard.png"))

            admin = login(browser, url, "admin")
            admin.goto(f"{url}/admin/audit")
            admin.wait_for_selector("#audit")
            written.append(shoot(admin, out / "audit.png"))
        finally:
            browser.close()
    return written


@dataclass
class World:
    """The filled throwaway databases and what the browser needs to know about them."""

    crm_url: str
    tracker_url: str
    tracker: Engine
    escalation_id: int  # Mr Zhang's escalation, the conversation screenshot
    sender_id: str
    nurse_id: int


def build(workdir: Path) -> World:
    """The throwaway CRM and tracker store, migrated, seeded and filled with the demo month."""
    from console.conversations import EVENTS

    crm_url = f"sqlite:///{workdir / 'crm.sqlite'}"
    tracker_url = f"sqlite:///{workdir / 'tracker.sqlite'}"
    point_at(crm_url, tracker_url)
    db.upgrade(crm_url)
    seed.seed(days=14, url=crm_url)
    tracker = create_engine(tracker_url)
    EVENTS.metadata.create_all(tracker)
    with db.session_scope(crm_url) as session:
        # last month's clinics too, so past visits sit on the roster's real slots
        seed.seed_slots(session, clock.local_now().date() - timedelta(days=35), days=35)
    with db.session_scope(crm_url) as session:
        demo = Demo(session, utcnow())
        demo.people()
        demo.visits()
        demo.medication()
        demo.care_plans()
        demo.readings()
        demo.reminders()
        demo.surveys()
        demo.triage()
        escalation_id = demo.escalations()
        demo.audit_history()
        sender_id = conversation(tracker, demo)
        nurse_id = demo.staff["nurse"].id
    return World(crm_url, tracker_url, tracker, escalation_id, sender_id, nurse_id)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "docs" / "screenshots",
        help="directory for the PNGs (default docs/screenshots)",
    )
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print("no Chromium: `apt-get install chromium` (Debian)", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # console.app imports channels, which import Rasa
    # Rasa's imports (channels -> rasa_fixes) re-enable third-party deprecation chatter; nothing of ours to see.
    warnings.showwarning = lambda *args, **kwargs: None
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = clock_time.monotonic()
    with tempfile.TemporaryDirectory(prefix="console-screens-") as tmp:
        world = build(Path(tmp))
        from console.app import make_app
        from console.conversations import History, Rasa

        app = make_app(
            history=History(world.tracker_url),
            rasa=Rasa("http://127.0.0.1:9", token=""),
            secret="screens",
            poll_interval=0.5,
        )
        try:
            with serve(app) as url:
                written = photograph(url, out, world)
        finally:
            # close the pooled SQLite connections before the temp dir goes
            app["console"].history.engine.dispose()
            world.tracker.dispose()
            for engine_url in (None, world.crm_url):
                db.get_engine(engine_url).dispose()
            db.get_engine.cache_clear()
            db.get_session_factory.cache_clear()
    for path in written:
        print(path)
    print(f"({clock_time.monotonic() - started:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
