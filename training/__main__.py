"""``python -m training train ...`` (from the repository root): see ``training.loop``."""

from training.loop import main

raise SystemExit(main())
