"""The demo-world SIMULATOR: the world outside the product, for the demo, tests and benchmarks.

It sits above ``core/`` (its outreach app routes through ``flywheel_pipeline.routing``) and
writes only to the landing zone, in the formats real sources use:

* ``world.py``: organizations, leads, models of hidden quality, recipients and providers
  (:func:`simulate`, :class:`SimConfig`);
* ``history.py``: the simulated outreach app's memory of the routing tables it used
  (``$FLYWHEEL_HOME/simulator/routing_history.json``).
"""

from flywheel_pipeline.simulator.history import routing_history
from flywheel_pipeline.simulator.world import (
    DEFAULT_MODELS,
    SANDBOX_MODEL_QUALITY,
    SIMULATOR_TAG,
    SimConfig,
    SimModel,
    SimResult,
    simulate,
)

__all__ = ["DEFAULT_MODELS", "SANDBOX_MODEL_QUALITY", "SIMULATOR_TAG", "SimConfig", "SimModel", "SimResult",
           "routing_history", "simulate"]
