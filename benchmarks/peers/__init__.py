"""Outside systems that `bench_sequence.py` compares Shelfwise against.

Each peer runs in its own virtualenv outside the repo and writes a JSON file to
`benchmarks/results/`; Shelfwise's code never imports them or their libraries. See
`sasrec_recbole.py` (RecBole's SASRec).
"""
