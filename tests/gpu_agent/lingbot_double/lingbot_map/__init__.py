"""TEST DOUBLE of LingBot-Map's ``lingbot_map`` package (see ../README.md); not the real model."""

__version__ = "0.0+double"
