"""Export survey results as FHIR R4 (QuestionnaireResponse, or a Bundle of them).

    .venv/bin/python -m bot.surveys export --response 12
    .venv/bin/python -m bot.surveys export --patient 3 [--instrument phq9] > phq9.json

Every export is written to the audit log (who: --actor, default the OS user).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import List, Optional

from sqlalchemy import select

from bot.crm import audit
from bot.crm.models import SurveyResponse
from bot.db import session_scope
from bot.surveys import fhir


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.surveys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="FHIR R4 JSON on stdout")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--response", type=int, help="one response id")
    which.add_argument("--patient", type=int, help="every response of one patient (a Bundle)")
    export.add_argument("--instrument", help="only this questionnaire (phq9, gad7, satisfaction)")
    export.add_argument("--actor", default=getpass.getuser(), help="who exports, for the audit log")
    args = parser.parse_args(argv)

    with session_scope() as session:
        if args.response is not None:
            response = session.get(SurveyResponse, args.response)
            if response is None:
                print(f"no survey response {args.response}", file=sys.stderr)
                return 2
            document = fhir.questionnaire_response(response)
            audit.record(session, args.actor, "export", "survey_response", response.id, response.patient_id, {})
        else:
            query = select(SurveyResponse).where(SurveyResponse.patient_id == args.patient)
            if args.instrument:
                query = query.where(SurveyResponse.instrument == args.instrument)
            responses = list(session.scalars(query.order_by(SurveyResponse.id)))
            document = fhir.bundle(responses)
            detail = {"count": len(responses)}
            audit.record(session, args.actor, "export", "patient_surveys", args.patient, args.patient, detail)
    json.dump(document, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
