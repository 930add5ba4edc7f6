"""National clouds: where each one's Entra ID authority and Graph live.

Tenant input only ever picks a name from this fixed table; the one way to point elsewhere is
the server-side override in settings (used for the emulator).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ValidationFailed
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class Cloud:
    """Endpoints of one Microsoft cloud."""

    name: str
    authority_host: str
    graph_base: str
    scope: str


CLOUDS: dict[str, Cloud] = {
    c.name: c
    for c in (
        Cloud("global", "https://login.microsoftonline.com", "https://graph.microsoft.com/v1.0",
              "https://graph.microsoft.com/.default"),
        Cloud("usgov_high", "https://login.microsoftonline.us", "https://graph.microsoft.us/v1.0",
              "https://graph.microsoft.us/.default"),
        Cloud("usgov_dod", "https://login.microsoftonline.us", "https://dod-graph.microsoft.us/v1.0",
              "https://dod-graph.microsoft.us/.default"),
        Cloud("china", "https://login.partner.microsoftonline.cn",
              "https://microsoftgraph.chinacloudapi.cn/v1.0",
              "https://microsoftgraph.chinacloudapi.cn/.default"),
    )
}


def resolve_cloud(name: str, settings: Settings) -> Cloud:
    """The endpoints to use for a cloud name, with the server-side overrides applied."""
    cloud = CLOUDS.get(name)
    if cloud is None:
        raise ValidationFailed("cloud", f"must be one of {', '.join(sorted(CLOUDS))}")
    return Cloud(
        cloud.name,
        (settings.authority_override or cloud.authority_host).rstrip("/"),
        (settings.graph_base_override or cloud.graph_base).rstrip("/"),
        cloud.scope,
    )
