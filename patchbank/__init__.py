"""Patchbank: FAISS-backed anomaly scoring for industrial inspection with an RGB camera plus a 3D sensor.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise: with
the default active wait, torch's idle OpenMP team in one thread spins on the cores another thread's team
computes on, which made a backbone pass in the main thread up to 60x slower on a busy 2-core machine. Set
before torch is imported, which every Patchbank entry point does after importing this package.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
