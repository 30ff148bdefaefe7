"""The paper's recipes: ``python -m recipes.paper_rn18`` and friends.

Recipes: ``paper_rn18``, ``paper_wrn34``, ``paper_rn50``, ``paper_vit``.

Each trains a DCS + GSAT network and the plain PGD-AT baseline of the same network, evaluates both and
writes a side-by-side report. Without ``--data-dir`` each runs its embedded default on Fashion-MNIST.
"""
