"""bert vs fusion vs each recaller on the same held-back validation candidates (quality only).

    python benchmarks/bench_bert_check.py DB '{"max_steps": 0}' > benchmarks/results/bert-NAME-check.json
"""
import sys, json, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from benchmarks.bench_bert import build_examples, quality
from engine import Engine
from plugins.bert import BertRanker
from plugins.fusion import FusionRanker
db, cfg = sys.argv[1], json.loads(sys.argv[2])
eng = Engine(db)
data, split, fit, check, names = build_examples(eng)
f = FusionRanker(); f.fit(fit, split.visible)
b = BertRanker(cfg); b.attach(eng.resources())
t = time.time(); m = b.fit(fit, split.visible); t = time.time() - t
out = {"db": db, "config": cfg, "check": len(check), "fit": len(fit),
       "fusion": quality([[c.item_id for c in f.rank(e.query, e.candidates)] for e in check], check, data.n_items),
       "bert": quality([[c.item_id for c in b.rank(e.query, e.candidates)] for e in check], check, data.n_items),
       "bert_seconds": round(t, 1), "bert_fit": {k: v for k, v in m.items() if k != "recallers"}}
for name in names:
    lists = [[c.item_id for c in sorted((c for c in e.candidates if name in c.ranks), key=lambda c: c.ranks[name])] for e in check]
    out[f"recaller {name}"] = quality(lists, check, data.n_items)
print(json.dumps(out))
