"""The DICOM listener: presentation contexts, association policy, and the server's lifecycle."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..config import Config
from ..configstore import ConfigStore
from ..health.metrics import DicomMetrics
from ..store import Store
from . import fastfind, faststore, handlers, qr, reactor, retrieve
from .reactor import EventRequestHandler, EventServer

log = logging.getLogger("appliance.dicom")

# Every transfer syntax pynetdicom knows: the dataset is stored as received, never re-encoded.
# The acceptor picks the first of these that a proposed context offers: Explicit VR Little
# Endian first (as DCMTK and Orthanc prefer), so that a C-GET requestor proposing the usual
# uncompressed trio gets stored files untouched instead of re-encoded ones.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.110",  # MPEG-4 AVC/H.264 (JPEG-LS)
]


def configure_pynetdicom(config: Config, spool_dir: Path) -> None:
    """Process-wide pynetdicom settings: spool received datasets to files (flat memory for
    objects of any size), and accept unknown storage SOP classes if asked.

    pynetdicom spools into the default temporary folder; it must be the storage area's own
    ``tmp/`` (same filesystem as the files: the store renames the spool into place, which fails
    with EXDEV from a tmpfs ``/tmp``; and reconciliation cleans up what a crash leaves there).
    """
    tempfile.tempdir = str(spool_dir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    reactor.use_for_requests()
    _config.UNRESTRICTED_STORAGE_SERVICE = config.dicom.accept_unknown_sop_classes
    _config.LOG_HANDLER_LEVEL = "none"
    _config.STORE_SEND_CHUNKED_DATASET = True  # C-MOVE/C-GET send stored files as they are
    retrieve.install()


def build_ae(config: Config) -> AE:
    settings = config.dicom
    ae = AE(ae_title=settings.aet)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.maximum_pdu_size = settings.maximum_pdu
    ae.require_called_aet = settings.check_called_aet
    apply_calling_policy(ae, config)
    contexts = [build_context(Verification, TRANSFER_SYNTAXES[:3])]
    contexts += [build_context(uid, TRANSFER_SYNTAXES[:3]) for uid in qr.QR_CONTEXTS]
    ae.supported_contexts = contexts
    for uid in [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]:
        # PS3.4 C.4.3: for C-GET the requestor proposes the SCP role for storage: accept it
        ae.add_supported_context(uid, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def apply_calling_policy(ae: AE, config: Config) -> None:
    """Storing from any AE is the plug-and-play default; otherwise only known modalities may
    associate (A-ASSOCIATE-RJ "calling AE title not recognized" for the others), and our own
    AE title: the health check's C-ECHO to ourselves (an AE title is no proof of identity
    anyway: known modalities' titles can be spoofed just as well)."""
    if config.dicom.store_from_unknown:
        ae.require_calling_aet = []
    else:
        ae.require_calling_aet = [m.aet for m in config.modalities.values()] + [config.dicom.aet]


class DicomServer:
    """Owns the AE and its listening server thread."""

    def __init__(self, configs: ConfigStore, store: Store, metrics: DicomMetrics) -> None:
        config = configs.current
        configure_pynetdicom(config, store.area.tmp)
        self.config = config
        self.ae = build_ae(config)
        configs.subscribe(lambda new: apply_calling_policy(self.ae, new))
        handlers_list: list[Any] = [
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_C_STORE, handlers.handle_store, [store, metrics]),
            (evt.EVT_C_FIND, qr.handle_find, [configs, store]),
            (evt.EVT_C_MOVE, qr.handle_move, [configs, store]),
            (evt.EVT_C_GET, qr.handle_get, [configs, store]),
            (evt.EVT_ACCEPTED, handlers.log_accepted),
            (evt.EVT_REJECTED, handlers.log_rejected),
            (evt.EVT_ABORTED, handlers.log_aborted),
            (evt.EVT_CONN_CLOSE, handlers.discard_partial),
            *metrics.handlers(),
        ]
        self.server = self.ae.make_server(
            (config.dicom.host, config.dicom.port),
            evt_handlers=handlers_list,
            server_class=EventServer,
            request_handler=EventRequestHandler,
        )
        if isinstance(self.server, EventServer):
            self.server.on_served = metrics.served
            if config.dicom.fast_store:
                finder = fastfind.Finder(configs, store, metrics)
                self.server.receiver = lambda dul: faststore.Receiver(dul, store, metrics, finder)
        metrics.active.set_function(lambda: len(self._acceptors()))
        # as ``AE.start_server`` does: pynetdicom's ``shutdown`` removes the server from this list
        # and raises ValueError if it is not there (the stop would then skip everything after)
        self.ae._servers.append(self.server)
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
            name="dicom-listener", daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        if isinstance(self.server, EventServer):
            self.server.prepare_spare()
        self._thread.start()
        log.info("DICOM listening on %s:%d as %s", self.config.dicom.host, self.port,
                 self.config.dicom.aet)

    def _acceptors(self) -> list[Association]:
        """Established inbound associations. A connection that never sent an A-ASSOCIATE-RQ
        (a port probe) is not waited for: it idles until the ACSE timeout."""
        return [a for a in self.server.active_associations if a.is_established]

    def stop(self, grace: float) -> None:
        """Stop accepting, then let in-flight associations finish (``grace`` seconds in all)."""
        if not self._thread.is_alive():  # never started (start-up failed): shutdown() would
            self.server.server_close()  # wait forever for a serve_forever that never ran
            return
        self.server.shutdown()
        end = time.monotonic() + grace
        for assoc in self._acceptors():
            assoc.join(max(0.0, end - time.monotonic()))
        for assoc in self._acceptors():
            if assoc.is_alive():
                log.warning("association with %s still open at shutdown: aborting",
                            assoc.requestor.ae_title)
                assoc.abort()
