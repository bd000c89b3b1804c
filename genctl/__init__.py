"""genctl: generative policies (diffusion / flow matching) for robot control.

Layers live in top-level folders of the source tree and are imported under this namespace:
``genctl.envs``, ``genctl.datasets``, ``genctl.policies``, ``genctl.apps``.
"""

from __future__ import annotations

import os

# MuJoCo must see a GL backend before its first import; EGL works headless on the CPU (Mesa llvmpipe).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# OpenMP threads that spin-wait collapse (up to 100x) when anything else uses a core; sleeping waits cost
# little when the machine is idle. Only effective if set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from genctl.errors import ConfigError, DataError, GenctlError  # noqa: E402

__all__ = ["ConfigError", "DataError", "GenctlError", "__version__"]
