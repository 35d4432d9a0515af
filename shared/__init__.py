"""Wire models and helpers shared by the core, the gpu agent and the storage agent."""

__version__ = "0.1.0"

#: Version of the wire contracts; sent and checked in the ``X-Cosma-Api`` header.
API_VERSION = "1"
API_VERSION_HEADER = "X-Cosma-Api"
