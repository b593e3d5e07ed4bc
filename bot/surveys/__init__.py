"""Questionnaires in chat: satisfaction, PHQ-9, GAD-7 (data/surveys/instruments.yml).

- instruments: the questionnaires as data (items, scales, LOINC codes, score bands);
- answers: what a patient's reply means (好几天, 2, B, 五星, 非常满意, 十分, 跳过, 暂停, 不做了);
- bot.crm.surveys: responses and answers stored item by item;
- fhir: a response as a FHIR R4 QuestionnaireResponse.
"""
