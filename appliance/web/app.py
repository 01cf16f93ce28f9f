"""The HTTP side: one Bottle application, served by waitress's threads inside our process."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import bottle
from waitress.server import create_server

from ..config import Config
from ..store import Store
from . import dicomweb, openapi, streaming
from .api import content, resources, system, tools, upload
from .dicomweb.common import PREFIX
from .router import Router

log = logging.getLogger("appliance.web")


def json_error(error: bottle.HTTPError) -> str:
    """Errors are JSON with a message, as Orthanc answers them."""
    bottle.response.content_type = "application/json"
    return json.dumps(
        {"HttpStatus": error.status_code, "Message": str(error.body or error.status_line)}
    )


ERROR_CODES = (400, 401, 403, 404, 405, 406, 408, 409, 413, 415, 429, 500, 503, 507)
UPLOADS = re.compile(rf"/instances|{PREFIX}/studies(/[^/]+)?")
UPLOAD_STREAMS = 4  # upload bodies streamed at once, each with a worker thread of its own
Installer = Callable[[bottle.Bottle], None]


def create_app(config: Config, store: Store, installers: Sequence[Installer] = ()) -> bottle.Bottle:
    """The application; ``installers`` add the routes of services built by the runtime."""
    app = bottle.Bottle()
    vars(app)["router"] = Router()  # before any route; Bottle refuses to rebind its attributes
    app.config["appliance.config"] = config
    app.config["appliance.store"] = store
    for code in ERROR_CODES:
        app.error(code)(json_error)  # an installer may replace them
    resources.install(app, config, store)
    system.install(app, config, store)
    upload.install(app, config, store)
    content.install(app, config, store)
    tools.install(app, config, store)
    dicomweb.install(app, config, store)
    for install in installers:
        install(app)
    openapi.install(app)
    app.router.compile()
    return app


def is_upload(method: str, path: str) -> bool:
    """The requests whose views read the body as it arrives (``POST /instances``, STOW-RS)."""
    return method == "POST" and UPLOADS.fullmatch(path) is not None


class HttpServer:
    def __init__(self, config: Config, store: Store, installers: Sequence[Installer] = ()
                 ) -> None:
        self.app = create_app(config, store, installers)
        self.server: Any = create_server(
            self.app,
            host=config.http.host,
            port=config.http.port,
            threads=config.http.threads + UPLOAD_STREAMS,
            ident="appliance",
            clear_untrusted_proxy_headers=True,
            # waitress refuses (413) bodies over this before the views see them
            max_request_body_size=int(config.http.max_upload_mb * 1024 * 1024) + (1 << 20),
            # a response is buffered in memory up to 8 MB before waitress spills it to a
            # temporary file: the default (1 MB) halves WADO-RS and archive download rates
            outbuf_overflow=8 << 20,
            # uploads come in large reads: each read is a turn of the network thread's loop
            recv_bytes=1 << 20,
        )
        self.server.channel_class = streaming.channel_class(is_upload, UPLOAD_STREAMS)

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def serve(self) -> None:
        log.info("HTTP listening on %s:%d", self.server.effective_host, self.port)
        self.server.run()

    def stop(self) -> None:
        self.server.close()
