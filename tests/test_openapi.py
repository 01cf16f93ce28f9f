"""The OpenAPI document covers every route the box serves, each with a summary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bottle
import pytest

from appliance.configstore import ConfigStore
from appliance.dicom.queryretrieve import QueryRetrieve
from appliance.health.service import Monitor
from appliance.jobs import Jobs
from appliance.routing.service import Routing
from appliance.routing.worker import Dispatcher
from appliance.store import Store
from appliance.web import openapi
from appliance.web.api import health as health_api
from appliance.web.api import jobs as jobs_api
from appliance.web.api import remote as remote_api
from appliance.web.api import routing as routing_api
from appliance.web.app import create_app

from .conftest import ApplianceProcess


@pytest.fixture
def app(tmp_path: Path) -> Iterator[bottle.Bottle]:
    """The application as the runtime builds it (without starting any service): the same
    installers as ``runtime.Appliance.start`` (the live comparison below fails otherwise)."""
    configs = ConfigStore(None, {"data": str(tmp_path)}, tmp_path)
    store = Store(configs.current)
    dispatcher = Dispatcher(configs, store)
    routing = Routing(configs, store, dispatcher)
    monitor = Monitor(configs, store, dispatcher)
    queries = QueryRetrieve(configs, store)
    jobs = Jobs(lambda: 10, 1)
    yield create_app(configs.current, store, [lambda a: routing_api.install(a, routing, jobs),
                                              lambda a: remote_api.install(a, queries, jobs),
                                              lambda a: jobs_api.install(a, jobs),
                                              lambda a: health_api.install(a, monitor)])
    store.stop()


def test_every_route_is_documented_with_a_summary(app: bottle.Bottle) -> None:
    doc = openapi.document(app)
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert len(operations) == len(app.routes), "two routes share one OpenAPI operation"
    for route in app.routes:
        path, _ = openapi.path_of(route.rule)
        operation = doc["paths"].get(path, {}).get(route.method.lower())
        assert operation is not None, f"{route.method} {route.rule} is missing"
        assert operation["summary"], f"{route.method} {route.rule} has no summary"
    rules = {f"{r.method} {r.rule}" for r in app.routes}
    assert set(openapi.SUMMARIES) <= rules, "summaries of routes that no longer exist"


def test_the_box_serves_the_document_of_its_routes(app: bottle.Bottle,
                                                   appliance: ApplianceProcess) -> None:
    served = appliance.json("/openapi.json")
    assert served["openapi"].startswith("3.")
    assert set(openapi.document(app)["paths"]) <= set(served["paths"])
    unnamed = [f"{method.upper()} {path}" for path, item in served["paths"].items()
               for method, operation in item.items() if not operation["summary"]]
    assert unnamed == [], "routes of the running box without a summary"
    assert served["paths"]["/{level}/{public_id}/archive"]["get"]["parameters"][0]["schema"][
        "enum"] == ["patients", "studies", "series"]
