#!/usr/bin/env python3
"""Microsoft's own Python client libraries against `m365-ingest sim --tls`.

Signs in with azure-identity's ClientSecretCredential (MSAL underneath: OpenID discovery, then the
client-credentials grant at the advertised token endpoint), then drives msgraph-core's request
adapter and PageIterator (kiota underneath) through:

  1. alerts_v2, following every @odata.nextLink, counting the items;
  2. incidents with $expand=alerts, checking every incident carries its alerts array;
  3. the beta threat submissions (emailThreats, urlThreats, fileThreats), every page.

Exits 0 when all of that worked, non-zero (with the reason) on the first failure.
See docs/sim-with-microsoft-sdk.md for how to run it.

Configuration (environment variables, all required except GRAPH_SCOPE and PAGE_SIZE):
  SIM_URL        the simulator root as it prints it, e.g. https://127.0.0.1:9999
  SIM_CA         the certificate PEM it wrote (`tls_cert = "..."`)
  TENANT_ID, CLIENT_ID, CLIENT_SECRET   as it prints them
  PAGE_SIZE      $top for alerts_v2 (default 100), so paging is exercised
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import httpx
from azure.identity import ClientSecretCredential
from kiota_abstractions.api_client_builder import register_default_deserializer
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from kiota_abstractions.serialization import AdditionalDataHolder, Parsable, ParseNode
from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph_core import APIVersion, BaseGraphRequestAdapter, GraphClientFactory
from msgraph_core.authentication import AzureIdentityAuthenticationProvider
from msgraph_core.tasks.page_iterator import PageIterator

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class Failure(Exception):
    """A check that did not hold."""


def env(name: str, default: Optional[str] = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise Failure(f"environment variable {name} is not set")
    return value


@dataclass
class GraphObject(Parsable, AdditionalDataHolder):
    """Any Graph entity: without the generated msgraph-sdk models every property lands in
    additional_data, which is all this check needs."""

    additional_data: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def create_from_discriminator_value(parse_node: ParseNode) -> "GraphObject":
        return GraphObject()

    def get_field_deserializers(self) -> dict[str, Callable[[ParseNode], None]]:
        return {}

    def serialize(self, writer) -> None:  # pragma: no cover - never sent
        writer.write_additional_data_value(self.additional_data)


@dataclass
class Page(Parsable, AdditionalDataHolder):
    """A Graph collection page: value and @odata.nextLink (what PageIterator reads)."""

    value: Optional[list[GraphObject]] = None
    odata_next_link: Optional[str] = None
    additional_data: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def create_from_discriminator_value(parse_node: ParseNode) -> "Page":
        return Page()

    def get_field_deserializers(self) -> dict[str, Callable[[ParseNode], None]]:
        return {
            "value": lambda n: setattr(
                self, "value", n.get_collection_of_object_values(GraphObject)
            ),
            "@odata.nextLink": lambda n: setattr(self, "odata_next_link", n.get_str_value()),
        }

    def serialize(self, writer) -> None:  # pragma: no cover - never sent
        writer.write_str_value("@odata.nextLink", self.odata_next_link)
        writer.write_collection_of_object_values("value", self.value)


class LinkRecorder(httpx.AsyncBaseTransport):
    """Wraps the transport to record every URL actually requested (to prove the nextLinks that
    were followed are https on the simulator)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def list_all(adapter: BaseGraphRequestAdapter, url: str) -> tuple[int, list[GraphObject]]:
    """GETs url and pages through every @odata.nextLink with msgraph-core's PageIterator;
    returns the number of pages and the items."""
    request = RequestInformation()
    request.http_method = Method.GET
    request.url = url
    request.headers.try_add("Accept", "application/json")
    first = await adapter.send_async(request, Page, {})
    if first is None or first.value is None:
        raise Failure(f"{url}: no collection in the answer")
    items: list[GraphObject] = []
    pages = 1

    def take(item: GraphObject) -> bool:
        items.append(item)
        return True

    iterator = PageIterator(first, adapter)
    # PageIterator.iterate's own loop, unrolled to count the pages it fetches.
    while True:
        iterator.enumerate(take)
        next_page = await iterator.next()
        if not next_page:
            break
        pages += 1
        iterator.current_page = next_page
        iterator.pause_index = 0
    return pages, items


async def run() -> None:
    sim_url = env("SIM_URL").rstrip("/")
    ca = env("SIM_CA")
    tenant = env("TENANT_ID")
    client_id = env("CLIENT_ID")
    secret = env("CLIENT_SECRET")
    page_size = int(env("PAGE_SIZE", "100"))
    if urlparse(sim_url).scheme != "https":
        raise Failure(f"SIM_URL must be https:// (run the simulator with --tls): {sim_url}")
    host = urlparse(sim_url).hostname or ""

    # 1. Sign in. The authority is the simulator; MSAL fetches
    # {authority}/{tenant}/v2.0/.well-known/openid-configuration and posts to the token_endpoint
    # found there. Instance discovery would ask login.microsoftonline.com about this unknown
    # authority host, so it is off; connection_verify trusts the simulator's certificate.
    credential = ClientSecretCredential(
        tenant,
        client_id,
        secret,
        authority=sim_url,
        disable_instance_discovery=True,
        connection_verify=ca,
    )
    token = credential.get_token(GRAPH_SCOPE)
    print(f"token: {len(token.token)} characters, expires_on={token.expires_on}")

    # 2. msgraph-core's client: the default Graph middleware on an httpx client whose base URL
    # is the simulator's Graph root and which trusts its certificate.
    context = ssl.create_default_context(cafile=ca)
    recorder = LinkRecorder(httpx.AsyncHTTPTransport(verify=context))
    http_client = GraphClientFactory.create_with_default_middleware(
        api_version=APIVersion.v1,
        client=httpx.AsyncClient(
            base_url=f"{sim_url}/graph/v1.0", verify=context, transport=recorder
        ),
    )
    # The scope is Graph's own (derived from the host it would be 127.0.0.1/.default, which
    # Entra, and so the simulator, rejects); the host is allowed explicitly because the default
    # list holds Microsoft's national clouds only.
    auth = AzureIdentityAuthenticationProvider(
        credential, scopes=[GRAPH_SCOPE], allowed_hosts=[host]
    )
    # JSON answers are read by kiota's JSON parser, as the generated msgraph-sdk registers it.
    register_default_deserializer(JsonParseNodeFactory)
    adapter = BaseGraphRequestAdapter(auth, http_client=http_client)
    graph = f"{sim_url}/graph"

    pages, alerts = await list_all(adapter, f"{graph}/v1.0/security/alerts_v2?$top={page_size}")
    print(f"alerts_v2: {len(alerts)} alerts in {pages} pages")
    if pages < 2:
        raise Failure("alerts_v2 gave one page: no @odata.nextLink was followed")
    if any(not a.additional_data.get("id") for a in alerts):
        raise Failure("an alert without an id")

    pages, incidents = await list_all(
        adapter, f"{graph}/v1.0/security/incidents?$expand=alerts&$top=50"
    )
    expanded = sum(len(i.additional_data.get("alerts") or []) for i in incidents)
    print(f"incidents: {len(incidents)} incidents in {pages} pages, {expanded} expanded alerts")
    if not incidents:
        raise Failure("no incidents")
    if any(not isinstance(i.additional_data.get("alerts"), list) for i in incidents):
        raise Failure("an incident without the alerts array that $expand=alerts asks for")

    for kind in ("emailThreats", "urlThreats", "fileThreats"):
        pages, subs = await list_all(
            adapter, f"{graph}/beta/security/threatSubmission/{kind}?$top=10"
        )
        print(f"threatSubmission/{kind}: {len(subs)} submissions in {pages} pages")

    plain = [u for u in recorder.urls if not u.startswith(f"{sim_url}/")]
    if plain:
        raise Failure(f"requests left the simulator's https root: {plain[:3]}")
    print(f"all {len(recorder.urls)} Graph requests went to {sim_url}/ over https")
    await http_client.aclose()


def main() -> int:
    try:
        asyncio.run(run())
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # any SDK error is a failure of the check, with its reason
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
