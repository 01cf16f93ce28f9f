"""Send every PET study to the planning system once it is stable (all its images arrived).

Configuration: a modality named "planning" (``PUT /modalities/planning``) and
``"hooks": {"path": "tools/hooks/pet_to_planning.py"}``. The send goes through the durable
outbound queue: a planning system that is down receives the study when it is back.
"""

import logging

log = logging.getLogger("hooks.pet_to_planning")

PLANNING = "planning"


def on_stable_study(study, api):
    series = [api.resource("series", s) for s in study["Series"]]
    if any(s and s["MainDicomTags"].get("Modality") == "PT" for s in series):
        queued = api.send("studies", study["ID"], PLANNING)
        log.info("PET study %s: %d instances queued for %s", study["ID"], queued, PLANNING)
