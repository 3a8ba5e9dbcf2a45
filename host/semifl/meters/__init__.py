"""Power meters behind one interface (base.Meter: start, stop, samples, joules) and the alignment of
their samples with the phases devices mark. Vendor packages are imported when a meter starts."""
from .base import Meter, MeterError, integrate

METERS = ("virtual", "ina219", "ppk2", "joulescope", "usb", "replay-ppk2", "replay-ina219")


def open_meter(name: str, **kw) -> Meter:
    """A meter by its --meter name; kw go to its constructor (port, pid and profile, shunt_ohms, path of a
    replayed recording, ...)."""
    if name == "virtual":
        from .process import ProcessMeter as cls
    elif name == "ina219":
        from .ina219 import INA219Meter as cls
    elif name == "ppk2":
        from .ppk2 import PPK2Meter as cls
    elif name == "joulescope":
        from .joulescope import JoulescopeMeter as cls
    elif name == "usb":
        from .usb_meter import USBMeter as cls
    elif name.startswith("replay-"):   # a recorded stream of that driver played back (path=...)
        from .replay import ReplayMeter

        return ReplayMeter.from_file(kw.pop("path"), name.split("-", 1)[1], **kw)
    else:
        raise ValueError(f"unknown meter {name!r}; choose from {METERS}")
    return cls(**kw)


__all__ = ["Meter", "MeterError", "integrate", "open_meter", "METERS"]
