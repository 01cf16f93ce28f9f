"""``POST /instances``: a DICOM file, or a ZIP of them, stored as if received over DICOM.

A minimal version for the admin page's upload (issue 7 owns the complete one)."""

from __future__ import annotations

import json
from typing import Any

import bottle

from ...store import Store


def install(app: bottle.Bottle, store: Store) -> None:
    @app.post("/instances")
    def upload() -> Any:
        results = store.receive_upload(bottle.request.body, str(bottle.request.remote_addr))
        answers = [
            {"Name": name, "Status": "Failure", "Message": outcome}
            if isinstance(outcome, str) else
            {"Name": name, "ID": outcome.ids.instance, "ParentStudy": outcome.ids.study,
             "Status": "AlreadyStored" if outcome.outcome == "kept-first" else "Success"}
            for name, outcome in results
        ]
        bottle.response.status = 200 if all(a["Status"] != "Failure" for a in answers) else 400
        bottle.response.content_type = "application/json"
        return json.dumps(answers[0] if len(answers) == 1 else answers, indent=2)
