"""Keep in-room treatment images: every study with an RT object (RT Image, Plan, Record, ...)
is protected against recycling, and the instance is noted in the log for the physicists.

Configuration: ``"hooks": {"path": "tools/hooks/keep_treatment_images.py"}``.
"""

import logging

log = logging.getLogger("hooks.keep_treatment_images")


def on_stored_instance(instance, api):
    if instance.tags.get("Modality", "").startswith("RT"):
        api.protect("studies", instance.ids["ParentStudy"])
        log.info("treatment image %s (%s) kept: study %s protected", instance.id,
                 instance.tags["Modality"], instance.ids["ParentStudy"])
