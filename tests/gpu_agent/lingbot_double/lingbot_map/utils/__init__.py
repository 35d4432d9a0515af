"""TEST DOUBLE: ``lingbot_map.utils``."""
