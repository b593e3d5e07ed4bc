"""Hospital information answered from data/hospital/hospital.yml."""

from __future__ import annotations

from typing import List

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.common import latest_text
from bot.catalog import find_info_topics


class HospitalInfo(Action):
    def name(self) -> str:
        return "action_hospital_info"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        topics = find_info_topics(latest_text(tracker))
        if not topics:
            dispatcher.utter_message(response="utter_info_menu")
        else:
            dispatcher.utter_message(text="\n".join(topic.answer for topic in topics))
        return []
