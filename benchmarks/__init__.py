"""nbqueue vs RQ benchmarks: ``python benchmarks/run.py [--quick]`` (see run.py)."""
