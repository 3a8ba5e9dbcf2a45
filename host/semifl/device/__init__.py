"""The device side, numpy only: what a Pi-class device runs, on a board (the Pi agent) and in
in-process runs alike. Nothing here knows the transport."""
from .cl import CLUploader
from .device import Device, DeviceError, Role
from .fl import FLClient, encode_update, local_update, update_masks
from .personal import PersonalClient, PersonalRole
from .secagg import SecAggRole
from .split import SplitClient, SplitClientRole, SplitError

__all__ = ["CLUploader", "Device", "DeviceError", "Role", "FLClient", "encode_update", "local_update", "update_masks",
           "PersonalClient", "PersonalRole", "SecAggRole", "SplitClient", "SplitClientRole", "SplitError"]
