"""Training and calibration: the VAE (``vae``), calibration of the anomaly scores (``calibrate``), the heads
(``slice_head``, ``heal_head``, ``denoiser``, shared loop in ``heads``), the region prior (``region_prior``) and
synthetic data (``synth``). Inference (``model``, ``ops``) never imports this package at module level."""
