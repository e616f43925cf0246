"""From probability maps to counted, measured nuclei: training targets that mark where touching nuclei meet,
the seeded watershed that splits them again, and per-nucleus measurements."""

from nucseg.instances.measure import measure_instances
from nucseg.instances.targets import instance_targets
from nucseg.instances.watershed import probs_to_instances

__all__ = ["instance_targets", "measure_instances", "probs_to_instances"]
