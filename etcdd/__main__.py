"""`python -m etcdd ...`: the same as the `etcdd` console script."""
from etcdd.tap import main

main()
