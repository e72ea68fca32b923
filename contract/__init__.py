"""The contract between the web app (annotation/) and training (rlhf/): what crosses the
seam, described once, importing neither Django nor torch. Both sides import it; neither
imports the other.

- `spans`: the changed segments of a correction (the server computes them; DDPO weights
  the tokens inside them).
- `export`: the `trl` export's columns, message layout and manifest (schema version).
- `methods`: training method names, evaluation metric keys and which way each is better.
- `results`: the typed results a trainer writes (`result.json`) and `train_round` reads.
"""
