"""Camera simulators. Rendering runs OpenCV in the calling thread, as the agent's vision does
(``edge_agent.vision``: a spinning OpenCV pool takes CPU from everything else on the machine)."""

import edge_agent.vision  # noqa: F401  (sets OpenCV to the calling thread)
