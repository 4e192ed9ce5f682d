"""nlcore microbenchmarks (DESIGN §6): `python -m bench` or `python bench/run.py`."""
