"""DICOMweb under ``/dicom-web``: QIDO-RS, WADO-RS and STOW-RS (PS3.18)."""

from __future__ import annotations

import bottle

from ...config import Config
from ...store import Store
from . import qido, stow, wado
from .common import PREFIX


def install(app: bottle.Bottle, config: Config, store: Store) -> None:
    qido.install(app, PREFIX, config, store)
    wado.install(app, PREFIX, store)
    stow.install(app, PREFIX, config, store)
