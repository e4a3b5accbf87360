"""One-off research sweeps (the demo's recipe search), kept to reproduce recorded results.

Not part of the installed package: run them from the repository root, e.g.
``python launch.py sweep --config research/sweep_demo_recipe.py --list``.
"""
