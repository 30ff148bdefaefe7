"""The paper's recipes: ``python -m recipes.paper_rn18`` and friends, and the CPU study.

Recipes: ``paper_rn18``, ``paper_wrn34``, ``paper_rn50``, ``paper_vit``. Each trains a DCS + GSAT
network and the plain PGD-AT baseline of the same network, evaluates both and writes a side-by-side
report. By default each runs at CPU scale on CIFAR-10 from ``./data`` (``python -m dcspass data fetch
cifar10``); ``--scale paper`` runs the paper's settings, ``--dataset fashion_mnist`` the stand-in.
``recipes.spec`` holds the flags and configs, ``recipes.common`` the run, ``recipes.report`` the
tables. ``python -m recipes.cpu_study`` follows DCS + GSAT and PGD-AT over training.
"""
