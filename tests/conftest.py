import os

# Before anything imports torch: see rcl_core/__init__.py on OpenMP's wait policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
