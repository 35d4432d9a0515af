"""TEST DOUBLE of ``lingbot_map.models.gct_stream_window.GCTStream`` (the windowed variant).

The runner drives windows itself (a fresh KV cache per window), so the double's
windowed model is the streaming double under the upstream module path.
"""

from lingbot_map.models.gct_stream import GCTStream as _StreamDouble


class GCTStream(_StreamDouble):
    """TEST DOUBLE: see ``lingbot_map.models.gct_stream.GCTStream``."""
