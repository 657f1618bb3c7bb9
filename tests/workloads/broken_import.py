"""A workload file whose import fails, as a user's file with a missing dependency would."""

import not_installed_anywhere  # noqa: F401
