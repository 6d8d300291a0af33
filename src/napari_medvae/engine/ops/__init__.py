"""One module per operation (``reconstruct``, ``denoise``, ``inpaint``, ``anomaly``, ``sample``) and the batched
network runner they share (``runner``). The functions are re-exported by :mod:`napari_medvae.engine`; this package
re-exports nothing, so ``engine.ops.anomaly`` is always the module and ``engine.anomaly`` the function."""
