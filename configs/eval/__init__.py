"""Evaluation task configs: `get_config(arg=None)` files for `launch/evaluate.py --config`
and for the in-loop evaluation hook (`spacenit_jax.eval.hook`).

    m_eurosat.py   GeoBench m-eurosat (kNN on mean-pooled online-encoder tokens, patch 4);
                   "m_eurosat.py:synthetic" swaps in the built-in synthetic dataset
    synthetic.py   the built-in synthetic task, needs no data (the default for smoke runs)
"""
