"""Input preparation, numpy/scipy only: checks, normalisation and resampling to the model's grid (``preprocess``),
the out-of-distribution check (``ood``), the brain mask (``brainmask``) and skull stripping (``skullstrip``)."""
