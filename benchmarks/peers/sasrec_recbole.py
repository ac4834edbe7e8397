"""RecBole's SASRec on the MovieLens-100K split of `bench_sequence.py`, trained to convergence.

The peer of issue #18. It runs in its own virtualenv outside the repo, so neither RecBole
nor its torch ever reaches Shelfwise's environment:

    python benchmarks/peers/sasrec_recbole.py --setup     # build ~/.cache/shelfwise/recbole-venv, then run
    python benchmarks/peers/sasrec_recbole.py             # run (re-executes itself in that venv)
    python benchmarks/peers/sasrec_recbole.py --epochs 2 --out /tmp/smoke.json   # smoke test

Any Python can start it: without RecBole importable it re-executes itself with the venv's
interpreter (`RECBOLE_VENV` overrides the place; `setup_recbole_venv.sh` builds it). It runs
at nice 10 with one torch thread: an epoch is about 100 CPU seconds (3 minutes of wall time
on a busy 2-core machine), so a run to convergence takes hours. After every epoch it writes
its state to `~/.cache/shelfwise/sasrec_peer.state.pt` (`--state`); `--resume` goes on from
there, exactly as if it had not stopped (same settings required; the file is deleted at the end).

What it does:

  split     `sequence_split.chronological_split(read_ml100k_inter(...))`, unchanged: each
            user's oldest 80% train, next 10% validation, newest 10% test.
  files     RecBole atomic benchmark files (`benchmark_filename: [train, valid, test]`) in a
            temporary folder, one row per next-item target: `item_id_list` = the previous
            `max_seq_length` items of the user's time line, `item_id` = the target. Train rows
            are the train items (each after the first); valid rows the validation items
            with the train + earlier validation items before them; test rows likewise.
  train     SASRec with RecBole's trainer (CE loss over all items, Adam), seeded, with early
            stopping (`stopping_step` evaluations without improvement) on validation NDCG@10
            of OUR protocol below: input = the user's train items, all items ranked except
            those, scored against the user's validation items. `--stop-on recbole` stops on
            RecBole's own validation NDCG@10 instead (next-item rows, full ranking, nothing
            excluded). The best epoch's weights are kept in memory, not in a checkpoint file.
  test      OUR protocol on the test part: for each test user, input = train + validation
            items (the last `max_seq_length`), scores over all items, train + validation
            items excluded, top 100; NDCG@10 with `sequence_split.per_user_ndcg` against the
            user's test items. RecBole's own test metrics (next-item rows) are reported
            beside it for reference only.

It writes `benchmarks/results/sasrec_peer.json`: settings, versions, epochs run, best epoch
(RecBole's 0-based index), training seconds, validation NDCG@10 (ours and RecBole's) at the
best epoch, test NDCG@10 (ours), the per-epoch history, and `top` = {user_id: [100 item ids]}
for every test user, so that `bench_sequence.py` can pair users.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
CACHE = Path.home() / ".cache" / "shelfwise"
VENV = Path(os.environ.get("RECBOLE_VENV", CACHE / "recbole-venv"))
INTER = CACHE / "recbole-1.2.1" / "ml-100k" / "ml-100k.inter"
OUT = BENCH / "results" / "sasrec_peer.json"
DATASET = "shelfwise-seq"
TOP_N = 100


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="store_true", help="build the RecBole venv first (setup_recbole_venv.sh)")
    p.add_argument("--inter", type=Path, default=INTER, help="RecBole's ml-100k.inter")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--max-seq-length", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.5,
                   help="hidden and attention dropout (0.5 beat 0.2 on validation NDCG@10, "
                        "0.1857 vs 0.1823: the results file's chosen_on_validation)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--stopping-step", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--stop-on", choices=("ours", "recbole"), default="ours",
                   help="validation NDCG@10 that early stopping follows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--state", type=Path, default=None,
                   help="written after every epoch, deleted when the run ends "
                        "(default: ~/.cache/shelfwise/<stem of --out>.state.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --state (same settings) instead of starting afresh")
    args = p.parse_args(argv)
    args.state = args.state or CACHE / f"{args.out.stem}.state.pt"
    return args


def ensure_venv(args: argparse.Namespace, argv: list[str]) -> None:
    """Build the venv on --setup; re-execute in it when RecBole is not importable here."""
    if args.setup:
        subprocess.run(["bash", str(HERE / "setup_recbole_venv.sh")], check=True)
    import importlib.util

    if importlib.util.find_spec("recbole") is not None:
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"RecBole is not importable and {python} does not exist. "
                 f"Run: python {Path(__file__).relative_to(BENCH.parent)} --setup")
    rest = [a for a in argv if a != "--setup"]
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *rest])


# -- the split as RecBole atomic files ------------------------------------------------------

def sequence_rows(split, part: str, max_len: int) -> list[tuple[str, list[str], str, float]]:
    """(user, previous items, target, timestamp): one row per interaction of `part`, its
    input the user's preceding items (all earlier parts included), newest `max_len`."""
    parts = ["train", "valid", "test"]
    lines: dict[str, list[tuple[str, float]]] = {}
    before: dict[str, int] = {}  # the user's items in the parts before `part`
    for name in parts[: parts.index(part) + 1]:
        for u, i, _r, t in getattr(split, name):
            lines.setdefault(u, []).append((i, t))
        if name != part:
            before = {u: len(items) for u, items in lines.items()}
    rows = []
    for u, items in lines.items():
        for pos in range(max(before.get(u, 0), 1), len(items)):
            prev = [i for i, _t in items[max(0, pos - max_len):pos]]
            rows.append((u, prev, items[pos][0], items[pos][1]))
    return rows


def write_atomic(split, folder: Path, max_len: int) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in ("train", "valid", "test"):
        rows = sequence_rows(split, part, max_len)
        counts[part] = len(rows)
        with open(folder / f"{DATASET}.{part}.inter", "w", encoding="utf-8") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\n")
            f.writelines(f"{u}\t{' '.join(prev)}\t{target}\t{t:.0f}\n" for u, prev, target, t in rows)
    return counts


# -- our protocol -----------------------------------------------------------------------------

def rank_users(model, dataset, histories: dict[str, list[str]], users: list[str], max_len: int,
               n: int = TOP_N, batch: int = 256) -> dict[str, list[str]]:
    """Top `n` item tokens per user: input = the last `max_len` history items, every item
    scored, the history's items (and RecBole's padding id 0) excluded."""
    import torch
    from recbole.data.interaction import Interaction

    tok2id = dataset.field2token_id[dataset.iid_field]
    id2tok = dataset.field2id_token[dataset.iid_field]
    model.eval()
    out: dict[str, list[str]] = {}
    with torch.no_grad():
        for start in range(0, len(users), batch):
            chunk = [u for u in users[start:start + batch] if histories.get(u)]
            if not chunk:
                continue
            seqs = [[tok2id[i] for i in histories[u][-max_len:]] for u in chunk]
            item_seq = torch.zeros(len(chunk), max(map(len, seqs)), dtype=torch.long)
            for r, s in enumerate(seqs):
                item_seq[r, :len(s)] = torch.tensor(s)
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
            scores = model.full_sort_predict(
                Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths})
            ).view(len(chunk), -1)
            scores[:, 0] = -torch.inf
            for r, u in enumerate(chunk):
                scores[r, [tok2id[i] for i in histories[u]]] = -torch.inf
            top = torch.topk(scores, n, dim=1).indices.tolist()
            for r, u in enumerate(chunk):
                out[u] = [str(id2tok[j]) for j in top[r]]
    return out


def our_ndcg(ss, model, dataset, split, upto: str, part: str, max_len: int):
    """Mean NDCG@10 of `part` given each user's history up to `upto`, and the top lists."""
    relevant = split.relevant(part)
    history = split.history(upto)
    top = rank_users(model, dataset, history, sorted(relevant, key=ss._natural), max_len)
    return float(ss.per_user_ndcg(top, relevant).mean()), top


def dumps(result: dict) -> str:
    """Indented JSON, but each user's top list on one line (943 lines, not 94,300)."""
    head = json.dumps({k: v for k, v in result.items() if k != "top"}, indent=1)
    top = ",\n".join(f"  {json.dumps(u)}: {json.dumps(items)}" for u, items in result["top"].items())
    return head[:-2] + ',\n "top": {\n' + top + "\n }\n}\n"


# -- resuming ---------------------------------------------------------------------------------

def save_state(path: Path, settings: dict, trainer, train_data, epoch: int, seconds: float) -> None:
    """Everything a stopped run needs to go on exactly as if it had not stopped."""
    import random

    import numpy as np
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "settings": settings, "epoch": epoch, "seconds": seconds,
        "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "cur_step": trainer.cur_step, "best_valid_score": trainer.best_valid_score,
        "best_state": trainer.best_state, "best_epoch": trainer.best_epoch,
        "history": trainer.history, "train_loss_dict": trainer.train_loss_dict,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "random": random.getstate(), "loader": train_data.generator.get_state()},
    }, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


def restore(path: Path, settings: dict, trainer, train_data) -> float:
    """Load `save_state`'s file into the trainer; returns the seconds already spent."""
    import random

    import numpy as np
    import torch

    state = torch.load(path, weights_only=False)  # our own file: settings, history, RNG states
    fixed = {k: v for k, v in settings.items() if k != "epochs"}
    if {k: v for k, v in state["settings"].items() if k != "epochs"} != fixed:
        sys.exit(f"{path} was written with other settings: {state['settings']}. "
                 "Delete it or run without --resume.")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step, trainer.best_valid_score = state["cur_step"], state["best_valid_score"]
    trainer.best_state, trainer.best_epoch = state["best_state"], state["best_epoch"]
    trainer.history, trainer.train_loss_dict = state["history"], state["train_loss_dict"]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["random"])
    train_data.generator.set_state(state["rng"]["loader"])
    return state["seconds"]


# -- the run ------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    args = parse_args(argv)
    ensure_venv(args, argv)
    os.nice(args.nice)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(BENCH))
    import _env
    import sequence_split as ss
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    # recbole/model/sequential_recommender/sine.py calls torch.autograd.set_detect_anomaly(True)
    # when the package is imported, which NaN-checks every tensor of every step (half the
    # training time). SASRec does not need it.
    torch.autograd.set_detect_anomaly(False)
    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas/torch deprecations inside RecBole

    environment = _env.machine(("recbole", "torch", "numpy", "scipy", "pandas"),
                               ("benchmarks/peers", "benchmarks/sequence_split.py"))
    split = ss.chronological_split(ss.read_ml100k_inter(args.inter))
    L = args.max_seq_length
    settings = {
        "model": "SASRec", "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": L, "learner": "adam",
        "learning_rate": args.lr, "train_batch_size": args.batch_size, "epochs": args.epochs,
        "stopping_step": args.stopping_step, "eval_step": 1, "seed": args.seed,
        "reproducibility": True, "stop_on": args.stop_on, "torch_threads": args.threads,
        "nice": args.nice,
    }

    with tempfile.TemporaryDirectory(prefix="sasrec-peer-") as tmp:
        tmp = Path(tmp)
        rows = write_atomic(split, tmp / DATASET, L)
        os.chdir(tmp)  # RecBole writes log/ and log_tensorboard/ under the working folder
        sys.argv[1:] = []  # RecBole's Config would read `--key=value` arguments as its own settings
        config = Config(model="SASRec", dataset=DATASET, config_dict={
            **{k: v for k, v in settings.items() if k not in ("model", "stop_on", "torch_threads", "nice")},
            "data_path": str(tmp), "checkpoint_dir": str(tmp / "saved"),
            "benchmark_filename": ["train", "valid", "test"],
            "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
            "RATING_FIELD": None,
            "load_col": {"inter": ["user_id", "item_id_list", "item_id", "timestamp"]},
            "alias_of_item_id": ["item_id_list"],
            "train_neg_sample_args": None,
            "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user",
                          "mode": "full"},
            "metrics": ["NDCG", "Recall", "Hit", "MRR"], "topk": [10],
            "valid_metric": "NDCG@10", "eval_batch_size": 4096,
            "use_gpu": False, "show_progress": False, "log_wandb": False, "worker": 0,
        })
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"], config["reproducibility"])
        model = SASRec(config, train_data.dataset).to(config["device"])

        class PeerTrainer(Trainer):
            """RecBole's trainer; validation also scores our protocol, and the best epoch's
            weights stay in memory (no checkpoint file, so no torch.load)."""

            def __init__(self, config, model):
                super().__init__(config, model)
                self.history: list[dict] = []
                self.last: dict = {}
                self.best_state = None
                self.best_epoch = None

            def _valid_epoch(self, valid_data, show_progress=False):
                native = self.evaluate(valid_data, load_best_model=False, show_progress=show_progress)
                ours, _ = our_ndcg(ss, self.model, dataset, split, "train", "valid", L)
                self.last = {"ours_ndcg@10": round(ours, 6), **{k: float(v) for k, v in native.items()}}
                score = ours if args.stop_on == "ours" else float(native["ndcg@10"])
                return score, dict(self.last)

            def _save_checkpoint(self, epoch, verbose=True, **kwargs):
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.best_epoch = epoch

        trainer = PeerTrainer(config, model)
        started = time.perf_counter()
        resumed = 0
        if args.resume and args.state.exists():
            started -= restore(args.state, settings, trainer, train_data)
            resumed = trainer.start_epoch
            print(f"resuming at epoch {resumed} from {args.state}", file=sys.stderr)

        def on_epoch(epoch_idx, valid_score):
            trainer.history.append({
                "epoch": epoch_idx, "loss": round(float(trainer.train_loss_dict[epoch_idx]), 4),
                "valid": trainer.last, "seconds": round(time.perf_counter() - started, 1),
            })
            save_state(args.state, settings, trainer, train_data, epoch_idx, time.perf_counter() - started)
            print(f"epoch {epoch_idx:3d}  loss {trainer.train_loss_dict[epoch_idx]:.2f}  "
                  f"valid NDCG@10 ours {trainer.last['ours_ndcg@10']:.4f}  "
                  f"recbole {trainer.last['ndcg@10']:.4f}  {time.perf_counter() - started:.0f}s",
                  file=sys.stderr, flush=True)

        trainer.fit(train_data, valid_data, verbose=False, saved=True, callback_fn=on_epoch)
        train_seconds = time.perf_counter() - started
        model.load_state_dict(trainer.best_state)
        best = next(h for h in trainer.history if h["epoch"] == trainer.best_epoch)
        native_test = {k: float(v) for k, v in trainer.evaluate(test_data, load_best_model=False).items()}
        test_ndcg, top = our_ndcg(ss, model, dataset, split, "valid", "test", L)
        n_items = dataset.item_num - 1  # id 0 is RecBole's padding
        args.state.unlink(missing_ok=True)

    import recbole

    result = {
        "benchmark": "sasrec_peer", "issue": 18, "environment": environment,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__},
        "data": {
            "inter": str(args.inter), "split": "sequence_split.chronological_split (80/10/10 per user)",
            "interactions": {p: len(getattr(split, p)) for p in ("train", "valid", "test")},
            "recbole_rows": rows, "users": len({u for u, *_ in split.train}),
            "items": n_items, "test_users": len(split.users()),
        },
        "settings": settings,
        "protocol": ("test: input = each test user's train + validation items (last "
                     f"{L}), all {n_items} items scored, train + validation items excluded, "
                     f"top {TOP_N}; NDCG@10 by sequence_split.per_user_ndcg against the test "
                     "items. valid (ours): the same with train history against validation "
                     "items. recbole_native: RecBole's full-ranking metrics on next-item rows "
                     "(one target each, teacher-forced history, nothing excluded)."),
        "epochs_run": len(trainer.history), "best_epoch": trainer.best_epoch,
        "resumed_at_epoch": resumed or None,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(train_seconds / max(1, len(trainer.history)), 2),
        "valid": {"ndcg@10": best["valid"]["ours_ndcg@10"],
                  "recbole_native": {k: v for k, v in best["valid"].items() if k != "ours_ndcg@10"}},
        "test": {"ndcg@10": round(test_ndcg, 6), "users": len(top),
                 "recbole_native": native_test},
        "load_average_end": list(os.getloadavg()),
        "history": trainer.history,
        "top": top,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(result))
    print(f"epochs {result['epochs_run']} (best {result['best_epoch']}), {train_seconds:.0f}s; "
          f"valid NDCG@10 ours {result['valid']['ndcg@10']:.4f} "
          f"recbole {best['valid']['ndcg@10']:.4f}; test NDCG@10 {test_ndcg:.4f} "
          f"({len(top)} users) -> {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
