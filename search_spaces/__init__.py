"""Search spaces shipped with autotune (YAML files beside this module)."""
