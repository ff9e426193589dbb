"""How xbarlab touches a chip: the `Crossbar` interface, safety limits, the simulated chip, real
instrument drivers and their wire-level emulators, write-verify programming and characterisation."""

from instruments.crossbar import BiasScheme, Capabilities, Crossbar
from instruments.factory import open_crossbar
from instruments.limits import LimitError, SafetyLimits

__all__ = ["BiasScheme", "Capabilities", "Crossbar", "LimitError", "SafetyLimits", "open_crossbar"]
