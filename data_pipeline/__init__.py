"""Data pipeline: read a Pokédex-style dataset, preprocess it with Ray Data, cache it.

    from data_pipeline.prepare import prepare_dataset
    data = prepare_dataset("../shared/datasets/pokedex")   # PreparedData (see dataset.py)

Modules: config (DataConfig), dataset (PreparedData, the contract with the model), sources (one
reader per layout + validation), synthetic (the embedded default), preprocess (pure functions),
pipeline (Ray Data), prepare (cache + CLI), ray_env (init_ray).
"""
