"""OPC UA security for the PLC link: the shared implementation lives in the core
(``edge_agent.opcua_server.security``), which the agent's own OPC UA server uses too."""

from edge_agent.opcua_server.security import (
    ContractUserManager,
    ModeName,
    PolicyName,
    SecuritySettings,
    certificate_uri,
    configure_client,
    new_server,
    trust_store,
    warn_if_insecure,
)

__all__ = [
    "ContractUserManager",
    "ModeName",
    "PolicyName",
    "SecuritySettings",
    "certificate_uri",
    "configure_client",
    "new_server",
    "trust_store",
    "warn_if_insecure",
]
