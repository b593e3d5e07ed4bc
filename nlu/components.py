"""Rasa graph components used in config.yml.

- MedicalJiebaTokenizer: Rasa's JiebaTokenizer with the medical dictionary's content in its fingerprint
  (Rasa's own cache does not notice dictionary edits) and without whitespace tokens.
- ChineseTimeExtractor: adds a `time` entity per time expression, resolved to local ISO datetimes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from rasa.engine.graph import ExecutionContext, GraphComponent
from rasa.engine.recipes.default_recipe import DefaultV1Recipe
from rasa.engine.storage.resource import Resource
from rasa.engine.storage.storage import ModelStorage
from rasa.nlu.extractors.extractor import EntityExtractorMixin
from rasa.nlu.tokenizers.jieba_tokenizer import JiebaTokenizer
from rasa.nlu.tokenizers.tokenizer import Token
from rasa.shared.nlu.constants import ENTITIES, TEXT
from rasa.shared.nlu.training_data.message import Message

from bot import timeparse


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.MESSAGE_TOKENIZER, is_trainable=True)
class MedicalJiebaTokenizer(JiebaTokenizer):
    """JiebaTokenizer whose fingerprint covers the dictionary files, dropping whitespace tokens."""

    @classmethod
    def fingerprint_addon(cls, config: Dict[str, Any]) -> Optional[str]:
        directory = config.get("dictionary_path")
        if not directory:
            return None
        digest = hashlib.sha256()
        for path in sorted(Path(directory).glob("*")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def tokenize(self, message: Message, attribute: str) -> List[Token]:
        tokens = super().tokenize(message, attribute)
        kept = [token for token in tokens if token.text.strip()]
        return kept or tokens[:1]


@DefaultV1Recipe.register(DefaultV1Recipe.ComponentType.ENTITY_EXTRACTOR, is_trainable=False)
class ChineseTimeExtractor(GraphComponent, EntityExtractorMixin):
    """Extracts time expressions (明天下午, 下周一上午, 3月5号, 后天9点) as `time` entities.

    value: the start as a local ISO datetime; additional_info: {"start", "end", "timezone"}.
    """

    @staticmethod
    def get_default_config() -> Dict[str, Any]:
        return {"timezone": None}  # None: the hospital's zone from bot.config

    def __init__(self, config: Dict[str, Any]) -> None:
        self._config = config

    @classmethod
    def create(
        cls,
        config: Dict[str, Any],
        model_storage: ModelStorage,
        resource: Resource,
        execution_context: ExecutionContext,
    ) -> ChineseTimeExtractor:
        return cls(config)

    def process(self, messages: List[Message]) -> List[Message]:
        for message in messages:
            text = message.get(TEXT)
            if not text:
                continue
            spans = timeparse.extract_times(text, self._config.get("timezone"))
            entities = [
                {
                    "entity": "time",
                    "start": span.start_offset,
                    "end": span.end_offset,
                    "value": span.start.isoformat(),
                    "confidence": 1.0,
                    "additional_info": {
                        "start": span.start.isoformat(),
                        "end": span.end.isoformat(),
                        "timezone": str(span.start.tzinfo),
                    },
                }
                for span in spans
            ]
            if entities:
                message.set(ENTITIES, message.get(ENTITIES, []) + self.add_extractor_name(entities), add_to_output=True)
        return messages
