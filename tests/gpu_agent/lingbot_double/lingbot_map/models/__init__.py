"""TEST DOUBLE: ``lingbot_map.models``."""
