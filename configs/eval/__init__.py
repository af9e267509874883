"""Evaluation task configs: `get_config(arg=None)` files for `launch/evaluate.py --config`,
the suite runner (`--suite geobench|geobench2`, settings in suite.py) and the in-loop
evaluation hook (`spacenit_jax.eval.hook`).

    m_eurosat.py ... m_neontree.py   GeoBench v1, one file per task (classification_v1.0:
                                     m_eurosat, m_bigearthnet, m_so2sat, m_brick_kiln,
                                     m_forestnet, m_pv4ger; segmentation_v1.0: m_pv4ger_seg,
                                     m_chesapeake, m_cashew_plant, m_sa_crop_type,
                                     m_nz_cattle, m_neontree)
    benv2.py, pastis.py, treesatai.py, biomassters.py
                                     GEO-Bench-2 tasks (.tortilla files through tacoreader)
    suite.py                         overrides applied to every task of a suite run
    synthetic.py                     the built-in synthetic task, needs no data
    synthetic_segmentation.py        the built-in per-pixel synthetic task
"""
