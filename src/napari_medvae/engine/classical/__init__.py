"""Classical (non-learned) image maths the engine builds on; numpy/scipy only, no torch, no model."""
