"""Long-tail remedies as pure tensor arithmetic (no Lightning): losses, sampling probabilities, post-hoc edits.

The Lightning adapters are in ``imbcompress.callbacks`` (loss remedies, post-hoc adjustment) and in the data module
(``sampler``); docs/remedies.md gives the formulas and references.
"""
