"""Classical (non-learned) image maths the engine builds on, no model: the Wiener and collaborative filters and
the noise estimate (``wiener``), slice interpolation and the biharmonic fill (``fill``), the region prior's kriging
(``kriging``). numpy/scipy, and torch as an array library where it is faster (``wiener.collaborative_wiener``)."""
