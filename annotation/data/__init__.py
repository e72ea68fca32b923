"""Data in and out: images and prompts, imports (prompts, labels, archives, the COCO and
synthetic-world held-out sets), exports (JSONL, trl's preference format, the released
formats) and their downloads."""
