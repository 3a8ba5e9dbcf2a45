"""The virtual fleet: real device code (Pi agent, MicroPython node) with simulated sensors, link, power."""
