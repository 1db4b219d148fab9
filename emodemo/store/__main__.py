"""``python -m emodemo.store ...`` is ``python -m emodemo corrections ...``."""
from .cli import main_corrections

raise SystemExit(main_corrections())
