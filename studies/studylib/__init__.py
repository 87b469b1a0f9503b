"""Library code that only the study drivers in ``studies/`` use (not part of the installed
``tsdfm`` package): distance from the exact posterior per step size (:mod:`.oracle_gap`),
equal-entropy placement of gen-PPL rows (:mod:`.frontier`) and the invented-word rate
(:mod:`.words`). A driver run as ``python studies/NAME.py`` finds this package beside it."""
