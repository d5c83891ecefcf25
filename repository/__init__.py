"""The model repository on disk: its layout and configs, the hashes of every file a model loads, and the
one writer that commits a verified stage into it."""
