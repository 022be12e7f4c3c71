"""``python -m vlmzip.eval.synthetic --out DIR --images N --videos N --seed S``: write all splits."""

from vlmzip.eval.synthetic.datasets import main

raise SystemExit(main())
