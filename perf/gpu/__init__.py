"""GPU measurement tooling: probe schema, torch_py Triton backend, repository, serving runs, report section."""
