"""The `slifmr` command line. Bad input ends with one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from slifmr import log
from slifmr.arguments import cli_float, cli_int
from slifmr.config import CHOICES, PRESETS, VARIANTS
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line ('error: ...') with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message}\n")
        raise SystemExit(2)


def _sub(subparsers: argparse._SubParsersAction, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=f"{help}\n\nexample:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


# ----------------------------------------------------------------------------- data


def _cmd_prepare(args: argparse.Namespace) -> int:
    from slifmr.data.format import read_dataset
    from slifmr.data.info import format_summary, summary
    from slifmr.data.ml1m import prepare_ml1m
    from slifmr.data.ml100k import prepare_ml100k

    prepare = prepare_ml1m if args.dataset == "ml-1m" else prepare_ml100k
    path = prepare(args.cache_dir, text=not args.no_text, force=args.force)
    print(f"dataset ready: {path}")
    print(format_summary(summary(read_dataset(path))))
    return 0


def _write_imported(ds, out: str, overwrite: bool) -> int:  # noqa: ANN001
    from slifmr.data.format import write_dataset
    from slifmr.data.info import format_summary, summary

    path = write_dataset(ds, out, overwrite=overwrite)
    print(f"wrote {path}")
    print(format_summary(summary(ds)))
    return 0


TABLE_FLAGS = ("user_col", "item_col", "time_col", "split", "split_col", "items", "item_key", "features", "kg", "kg_links")


def _text_columns(args: argparse.Namespace) -> list[str]:
    return [c.strip() for c in (args.text_cols or "").split(",") if c.strip()]


def _cmd_import_table(args: argparse.Namespace, thresholds: dict[str, float]) -> int:
    from slifmr.data.table import FeatureSource, InteractionColumns, import_table

    split = args.split or ("column" if args.split_col else "random")
    if args.split_seed is not None and split != "random":
        raise SlifmrError(f"--split-seed does not apply: --split {split} draws nothing")
    cols = InteractionColumns(args.user_col or "user_id", args.item_col or "item_id", args.time_col, args.split_col,
                              thresholds)
    ds = import_table(
        args.dir, columns=cols, split=split, split_seed=2026 if args.split_seed is None else args.split_seed,
        items=args.items, item_key=args.item_key,
        text_columns=_text_columns(args),
        features=[FeatureSource.parse(f) for f in args.features], kg=args.kg, kg_links=args.kg_links,
        name=args.name or Path(args.out).name, cache_dir=args.cache_dir,
    )
    return _write_imported(ds, args.out, args.overwrite)


def _cmd_add_features(args: argparse.Namespace) -> int:
    from slifmr.data.format import write_dataset
    from slifmr.data.info import format_summary, summary
    from slifmr.data.table import FeatureSource, add_features

    ds = add_features(args.dataset, args.name, FeatureSource(args.name, args.source, args.column), key=args.key)
    write_dataset(ds, args.dataset, overwrite=True)
    print(f"added modality {args.name} to {args.dataset}")
    print(format_summary(summary(ds)))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from slifmr.data.format import refuse_existing
    from slifmr.data.recbole import is_presplit, parse_thresholds

    refuse_existing(args.out, args.overwrite)  # before minutes of importing, not after
    thresholds = parse_thresholds(args.threshold)
    if args.cache_dir is not None and not args.text_cols:
        raise SlifmrError("--cache-dir holds text embeddings: it applies with --text-cols only")
    if args.format == "table":
        return _cmd_import_table(args, thresholds)
    given = [f"--{f.replace('_', '-')}" for f in TABLE_FLAGS if getattr(args, f) not in (None, [], False)]
    if given:
        raise SlifmrError(f"{', '.join(given)}: only for 'slifmr data import table'")
    if args.split_seed is not None and (args.format == "mmrec" or is_presplit(args.dir, args.name)):
        raise SlifmrError(f"--split-seed does not apply: {args.dir} is pre-split "
                          f"({'x_label' if args.format == 'mmrec' else '.train/.valid/.test.inter'}), its split is kept")
    if args.format == "recbole":
        from slifmr.data.recbole import import_recbole
        from slifmr.data.table import add_text_modality

        seed = 2026 if args.split_seed is None else args.split_seed
        ds = import_recbole(args.dir, args.name, split_seed=seed, thresholds=thresholds)
        add_text_modality(ds, _text_columns(args), args.cache_dir, f"{args.dir}/{ds.name}.item")
    elif args.text_cols:
        raise SlifmrError("--text-cols: an MMRec folder has no item metadata table (use data import table or recbole)")
    else:
        from slifmr.data.mmrec import import_mmrec

        ds = import_mmrec(args.dir, args.name, thresholds=thresholds)
    return _write_imported(ds, args.out, args.overwrite)


def _modalities(spec: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in filter(None, spec.split(",")):
        name, _, dim = part.partition(":")
        if not name or not dim.isdigit() or int(dim) <= 0:
            raise SlifmrError(f"--modalities: '{part}' is not name:dim with a positive dim (e.g. text:32,image:64)")
        out.append((name, int(dim)))
    return tuple(out)


# each generator's own flags and their defaults (their ranges: the parser's types)
SYNTH_FLAGS = {"clusters": {"entities": 2000, "triples": 10000, "relations": 8},
               "planted": {"latent_dim": 16, "cluster_size": 50}}


def _cmd_synth(args: argparse.Namespace) -> int:
    from slifmr.data.format import refuse_existing
    from slifmr.data.synth import check_request, synthesize

    refuse_existing(args.out, args.overwrite)
    try:
        check_request(args.users, args.items, args.interactions)
    except ValueError as e:
        raise SlifmrError(str(e)) from None
    own = SYNTH_FLAGS["planted" if args.planted else "clusters"]
    other = SYNTH_FLAGS["clusters" if args.planted else "planted"]
    given = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name) is not None]
    if given:
        raise SlifmrError(f"{', '.join(given)} do(es) not apply to the {'planted' if args.planted else 'cluster'} "
                          f"generator{'' if args.planted else ' (add --planted)'}")
    chosen = {name: default if getattr(args, name) is None else getattr(args, name) for name, default in own.items()}
    common = {"users": args.users, "items": args.items, "interactions": args.interactions,
              "modalities": _modalities(args.modalities), "seed": args.seed}
    if args.planted:
        from slifmr.data.synth import synthesize_planted

        ds = synthesize_planted(**common, **chosen)
    else:
        ds = synthesize(**common, **chosen)
    return _write_imported(ds, args.out, args.overwrite)


def _cmd_hold_out(args: argparse.Namespace) -> int:
    from slifmr.data.cold import hold_out_items
    from slifmr.data.format import read_dataset, refuse_existing

    refuse_existing(args.out, args.overwrite)
    ds = hold_out_items(read_dataset(args.path), args.share, args.seed)
    ds.name = f"{ds.name}-cold"
    print(ds.provenance["cold_protocol"])
    return _write_imported(ds, args.out, args.overwrite)


def _cmd_export_split(args: argparse.Namespace) -> int:
    from slifmr.data.export_split import export_split
    from slifmr.data.format import read_dataset

    rows = export_split(read_dataset(args.path), args.out, args.format)
    print(f"wrote {args.out}: " + ", ".join(f"{name} {n:,} rows" for name, n in rows.items()))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from slifmr.data.format import read_dataset
    from slifmr.data.info import format_summary, summary

    s = summary(read_dataset(args.path))
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = _sub(sub, "data", "prepare, import, generate and inspect datasets", "slifmr data info ~/.cache/slifmr/ml-100k")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)

    p = _sub(dsub, "prepare", "build the embedded MovieLens-100K + KG dataset, or MovieLens-1M with ml-100k's KG "
             "linked by title and year (both with the text modality; built once, cached)",
             "slifmr data prepare ml-100k --cache-dir ~/.cache/slifmr\n  slifmr data prepare ml-1m")
    p.add_argument("dataset", choices=["ml-100k", "ml-1m"])
    p.add_argument("--cache-dir", help="where raw files, embeddings and the dataset go (default $XDG_CACHE_HOME/slifmr)")
    p.add_argument("--no-text", action="store_true", help="skip the all-MiniLM-L6-v2 text modality")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached dataset exists")
    p.set_defaults(func=_cmd_prepare)

    p = _sub(dsub, "import", "import Parquet/CSV tables, RecBole atomic files or an MMRec dataset folder",
             "slifmr data import table interactions.parquet --user-col user_id --item-col item_id --out data/mine\n"
             "  slifmr data import recbole ./ml-1m --out data/ml-1m")
    p.add_argument("format", choices=["table", "recbole", "mmrec"])
    p.add_argument("dir", help="table: the interactions table (Parquet or CSV; a path or a URI such as s3://...); "
                   "recbole/mmrec: the folder holding <name>.inter (and .item/.kg/.link, or image_feat.npy/text_feat.npy)")
    p.add_argument("--out", required=True, help="dataset folder to write (must not exist unless --overwrite)")
    p.add_argument("--name", help="dataset name (recbole: the atomic-file prefix; default: the folder name or the only .inter)")
    p.add_argument("--split-seed", type=cli_int(0), help="seed of the per-user 8:1:1 split (default 2026; only for a "
                   "random split)")
    t = p.add_argument_group("table (slifmr data import table)")
    t.add_argument("--user-col", help="user id column (default user_id)")
    t.add_argument("--item-col", help="item id column (default item_id)")
    t.add_argument("--time-col", help="timestamp column (seconds or Arrow timestamps)")
    t.add_argument("--split", choices=["random", "temporal", "global-temporal", "column"],
                   help="random: per-user 8:1:1 (default); temporal: per-user leave-last-out; global-temporal: cut at "
                        "the 80%%/90%% time quantiles; column: the --split-col values (train/valid/test)")
    t.add_argument("--split-col", help="column holding train / valid / test (implies --split column)")
    t.add_argument("--items", help="item metadata table keyed by --item-key")
    t.add_argument("--item-key", help="item id column of --items, --features tables and --kg-links (default: --item-col)")
    t.add_argument("--text-cols", help="columns of --items (recbole: of .item) embedded with all-MiniLM-L6-v2 as the "
                   "text modality, e.g. title,description")
    t.add_argument("--features", action="append", default=[], metavar="NAME=PATH[:COLUMN]",
                   help="a modality from a table keyed by item id (its one list column, or COLUMN), or an .npy matrix "
                        "in the row order of --items (repeatable)")
    t.add_argument("--kg", help="KG triples table with columns head, relation, tail (raw entity ids)")
    t.add_argument("--kg-links", help="item -> entity link table with columns --item-key and entity")
    t.add_argument("--cache-dir", help="where text embeddings are cached (default $XDG_CACHE_HOME/slifmr)")
    p.add_argument("--threshold", action="append", metavar="COL=VALUE",
                   help="keep only rows with COL >= VALUE as positives (RecBole's convention; repeatable, all must "
                        "hold), e.g. label=1 or rating=4; the summary reports how many rows it dropped")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import)

    p = _sub(dsub, "add-features", "attach a modality to a dataset from a table keyed by raw item id (atomic; a new "
             "fingerprint)", "slifmr data add-features data/mine --name image --from image_emb.parquet")
    p.add_argument("dataset")
    p.add_argument("--name", required=True, help="the modality's name")
    p.add_argument("--from", dest="source", required=True, help="Parquet or CSV table: item id and one vector column")
    p.add_argument("--key", default="item_id", help="its item id column (default item_id)")
    p.add_argument("--column", help="its vector column (default: the one list column)")
    p.set_defaults(func=_cmd_add_features)

    p = _sub(dsub, "synth", "generate a seeded synthetic dataset (power-law, KG, correlated features)",
             "slifmr data synth --users 10000 --items 2000 --interactions 200000 --out data/synth-10k\n"
             "  slifmr data synth --planted --users 100000 --items 10000 --interactions 1000000 --out data/planted-100k")
    p.add_argument("--users", type=cli_int(1), default=1000)
    p.add_argument("--items", type=cli_int(1), default=500)
    p.add_argument("--interactions", type=cli_int(1), default=20000)
    p.add_argument("--entities", type=cli_int(0), help="KG entities (default 2000; cluster generator)")
    p.add_argument("--triples", type=cli_int(0), help="KG triples (default 10000; cluster generator)")
    p.add_argument("--relations", type=cli_int(1), help="KG relations (default 8; cluster generator)")
    p.add_argument("--planted", action="store_true",
                   help="planted structure: latent user/item factors, item clusters that shape the features and "
                        "the KG, power-law degrees (slifmr.data.synth.synthesize_planted); for accuracy at scale")
    p.add_argument("--latent-dim", type=cli_int(1), help="planted: latent factor size (default 16)")
    p.add_argument("--cluster-size", type=cli_int(1), help="planted: items per cluster (default 50)")
    p.add_argument("--modalities", default="text:32,image:64", help="name:dim,... ('' for none)")
    p.add_argument("--seed", type=cli_int(0), default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = _sub(dsub, "hold-out", "the cold-start protocol: hold a seeded share of items out of training (their "
             "interactions go to valid/test); runs on the result report metrics on those items alone as 'cold'",
             "slifmr data hold-out ~/.cache/slifmr/ml-100k --share 0.1 --out data/ml-100k-cold")
    p.add_argument("path")
    p.add_argument("--share", type=cli_float(0, 1, open_low=True, open_high=True), default=0.1, help="share of the items held out (default 0.1)")
    p.add_argument("--seed", type=cli_int(0), default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_hold_out)

    p = _sub(dsub, "export-split", "write a dataset's train/valid/test in raw ids (Parquet or CSV) for another system "
             "to train on; score its lists with evaluate-recs under the same split",
             "slifmr data export-split data/mine --out splits/mine --format csv")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="folder for train, valid and test (must not exist)")
    p.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    p.set_defaults(func=_cmd_export_split)

    p = _sub(dsub, "info", "print counts, density, split, KG and feature coverage", "slifmr data info data/synth-10k")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=_cmd_info)


# ----------------------------------------------------------------------------- train & co


def _run_config(run_dir: Path):  # noqa: ANN202
    from slifmr.api import load_run

    return load_run(run_dir).config


def _flag_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The config keys `slifmr train`'s own flags set (those given), from options.FLAGS."""
    from slifmr.options import FLAGS

    pairs = ((key, getattr(args, flag.lstrip("-").replace("-", "_"))) for key, flag in FLAGS.items()
             if key == "data" or "." in key)  # config keys; the launch's options are not
    return [(key, value) for key, value in pairs if value is not None]


def _resumed_config(run_dir: Path, args: argparse.Namespace):  # noqa: ANN202
    """The run's own config, with only runtime keys (config.RUNTIME_KEYS) allowed to change;
    any other option that would change what is trained is refused, naming it."""
    from slifmr.config import (
        RUNTIME_KEYS,
        copy_config,
        flatten_config,
        parse_override,
        read_config_file,
        resolve_locations,
        set_key,
        validate,
    )

    saved = _run_config(run_dir)
    cfg = copy_config(saved)
    requested: list[tuple[str, object]] = []
    if args.config:
        requested += list(flatten_config(read_config_file(args.config)).items())
    if args.variant is not None:
        requested.append(("variant", args.variant))
    requested += [parse_override(item) for item in args.set]
    requested += _flag_overrides(args)
    changed = []
    for key, value in requested:
        if key == "variant":
            if value != saved.variant:
                changed.append(f"variant ({saved.variant} -> {value})")
            continue
        if key == "data":
            same = saved.data is not None and Path(str(value)).resolve() == Path(saved.data).resolve()
            if not same:
                changed.append(f"data ({saved.data or 'the embedded ml-100k'} -> {value})")
            continue
        before = flatten_config(cfg.to_dict()).get(key)
        set_key(cfg, key, value)
        after = flatten_config(cfg.to_dict())[key]
        if after != before and key not in RUNTIME_KEYS:
            changed.append(f"{key} ({before} -> {after})")
    if changed:
        raise SlifmrError(f"--resume {run_dir}: {', '.join(changed)} would change what is trained; a run resumes "
                          f"with its own config (only {', '.join(RUNTIME_KEYS)} may change): start a new run with --out")
    resolve_locations(cfg)
    validate(cfg)
    return saved, cfg


def _check_train_options(args: argparse.Namespace, cfg) -> None:  # noqa: ANN001
    """Options that would be accepted and have no effect are refused (slifmr/options.py, the
    rules `slifmr.train()` applies too)."""
    from slifmr.config import flatten_config, parse_override, read_config_file
    from slifmr.options import COMMAND_LINE, check_options

    given = [key for key, _ in _flag_overrides(args)] + [parse_override(item)[0] for item in args.set]
    from_file = list(flatten_config(read_config_file(args.config))) if args.config else []
    check_options(cfg, given, COMMAND_LINE, from_file=from_file, workers=args.workers, gpu=args.gpu,
                  address=args.address, max_failures=args.max_failures, resume=bool(args.resume))


def _check_tracking_uri(uri: str | None, tracker: str | None) -> None:
    if uri is not None and tracker != "mlflow":
        raise SlifmrError(f"--tracking-uri applies to --tracker mlflow (the tracker is {tracker or 'none'})")


def _cmd_train(args: argparse.Namespace) -> int:
    from slifmr.api import default_run_dir, fit, refuse_existing_run
    from slifmr.config import load_config
    from slifmr.distributed.checkpoint import exists as checkpoint_exists

    saved = None
    if args.resume:
        run_dir = Path(args.resume)
        if args.preset:
            raise SlifmrError("--preset does not apply to --resume (the run keeps the config it was trained with)")
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise SlifmrError("--out does not apply to --resume (the run continues in its own folder)")
        from slifmr.runlock import LOCK_FILE, RunLock

        if (run_dir / LOCK_FILE).exists():  # a live writer is named first: its first checkpoint may not exist yet
            with RunLock(run_dir):  # the lock file is there already: the probe writes nothing new
                pass
        if not checkpoint_exists(RunLayout(run_dir).checkpoint):
            _run_config(run_dir)  # names a missing or non-run folder first
            raise SlifmrError(f"{run_dir} holds no checkpoint to resume from")
        saved, cfg = _resumed_config(run_dir, args)
    else:
        cfg = load_config(args.config, args.variant, args.set, settings=_flag_overrides(args), preset=args.preset)
    if cfg.data is not None and not Path(cfg.data).exists():
        raise SlifmrError(f"dataset folder {cfg.data} does not exist")
    _check_train_options(args, cfg)
    if not args.resume:  # after every check: a refused command leaves no folder
        run_dir = Path(args.out) if args.out else default_run_dir(cfg)
        refuse_existing_run(run_dir)
    if saved is not None and saved != cfg:  # train_loop records it once the checkpoint is accepted
        log.info(f"resuming with {', '.join(_changes(saved, cfg))} (recorded in {run_dir / 'config.yaml'})")
    try:
        results = fit(cfg, run_dir, resume=bool(args.resume), workers=args.workers, gpu=args.gpu,
                      max_failures=args.max_failures, address=args.address).results
    except KeyboardInterrupt:
        # checkpoints are swapped in atomically, so the last complete epoch's is on disk
        sys.stderr.write(f"interrupted; continue with: slifmr train --resume {run_dir}\n")
        return 130
    print(json.dumps({"run": str(run_dir), "best_epoch": results["best_epoch"], "test": results["test"]}, indent=2))
    return 0


def _changes(before, after) -> list[str]:  # noqa: ANN001
    from slifmr.config import flatten_config

    a, b = flatten_config(before.to_dict()), flatten_config(after.to_dict())
    return [f"{k} {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from slifmr.api import load_run
    from slifmr.evaluation import cutoffs

    ks = cutoffs(args.k) if args.k else None
    run = load_run(args.run_dir)
    out = {"run": str(run.path), "best_epoch": run.best_epoch, "valid": run.evaluate("valid", ks),
           "test": run.evaluate("test", ks)}
    print(json.dumps(out, indent=2))
    return 0


def _cmd_evaluate_recs(args: argparse.Namespace) -> int:
    from slifmr.data.format import read_dataset
    from slifmr.evaluate_recs import evaluate_recommendations
    from slifmr.evaluation import cutoffs

    ks = cutoffs(args.k)
    out = evaluate_recommendations(args.recs, read_dataset(args.data), ks, args.split)
    print(json.dumps(out, indent=2))
    return 0


def _resolve_asked(ds, asked: list[str], spec: str | None):  # noqa: ANN001, ANN202
    """`resolve_users`, and when --users split an id that holds a comma, the way to ask for it."""
    from slifmr.recommend import resolve_users

    try:
        return resolve_users(ds, asked)
    except SlifmrError as e:
        whole = spec.strip() if spec and "," in spec else None
        if whole is None:
            raise
        try:
            resolve_users(ds, [whole])
        except SlifmrError:
            raise e from None
        raise SlifmrError(f"{e}; '{whole}' is one user id: quote an id holding a comma, --users "
                          f"'\"{whole}\"', or list ids one per line with --users-file") from None


def _cmd_recommend(args: argparse.Namespace) -> int:
    from slifmr.recommend import (
        format_recommendations,
        format_table,
        parse_user_list,
        read_user_file,
        recommend,
        shortfall_note,
    )

    serving = args.history is not None or args.allow is not None or not args.exclude_seen
    if serving and args.all:
        raise SlifmrError("--history, --allow and --no-exclude-seen apply to --users / --users-file (one request "
                          "per user, as the export's scorer answers it)")
    if sum(map(bool, (args.users, args.users_file, args.all))) != 1:
        raise SlifmrError("give one of --users ID,ID,..., --users-file FILE or --all --out FILE.parquet")
    if args.all and not args.out:
        raise SlifmrError("--all needs --out FILE.parquet")
    if args.out and not args.all:
        raise SlifmrError("--out applies to --all (with --users the lists are printed)")
    if (args.workers or args.gpu or args.address) and not args.all:
        raise SlifmrError("--workers, --gpu and --address apply to --all (Ray Data batch inference)")
    if args.split and not args.all:
        raise SlifmrError("--split applies to --all (lists written to be scored by slifmr evaluate-recs)")
    if args.split and args.workers:
        raise SlifmrError("--split is not available with --workers yet (the export leaves out every seen item): "
                          "drop --workers")
    if (args.gpu or args.address) and not args.workers:
        raise SlifmrError("--gpu and --address apply to Ray Data inference: add --workers N (N >= 1)")
    # read before the run loads: a malformed list fails at once
    asked = read_user_file(args.users_file) if args.users_file else parse_user_list(args.users) if args.users else None
    from slifmr.api import load_run

    run = load_run(args.run_dir)
    if args.all and args.workers:
        path, actors = run.recommend_all_ray(args.out, args.k, args.workers, args.gpu, args.address)
        if actors == 0:
            how = "one Parquet part written in this process: the users fit one batch, Ray's start-up would cost more"
        else:
            fewer = f" of the {args.workers} asked for: one batch of users per actor at least" if actors < args.workers else ""
            how = f"Parquet parts written by {actors} Ray Data actor(s){fewer}"
        print(f"wrote top-{args.k} for every user to {path}/ ({how})")
        return 0
    ds, model = run.dataset, run.model
    if args.all:
        path, short = run.recommend_all(args.out, args.k, args.split)
        masked = {None: "every item the user has", "valid": "training items", "test": "training and validation items"}
        print(f"wrote top-{args.k} for {ds.num_users:,} users to {path} (left out: {masked[args.split]})")
        users = ds.num_users
    elif serving:
        history = parse_user_list(args.history, "--history") if args.history is not None else None
        allow = parse_user_list(args.allow, "--allow") if args.allow is not None else None
        table = run.recommend(asked, args.k, history=history, allow=allow, exclude_seen=args.exclude_seen)
        print(format_table(ds, asked, table))
        per_user = table.group_by("user").aggregate([("rank", "count")]).column("rank_count").to_pylist()
        users, short = len(set(asked)), len(set(asked)) - sum(c >= args.k for c in per_user)
    else:
        user_ids = _resolve_asked(ds, asked, args.users)
        recs = recommend(model, ds, user_ids, args.k)
        print(format_recommendations(ds, user_ids, recs))
        users, short = user_ids.numel(), int((recs.counts(user_ids) < args.k).sum())
    note = shortfall_note(users, short, args.k)
    if note:
        log.info(note)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from slifmr.api import load_run

    path = load_run(args.run_dir).export(args.out, args.k)
    manifest = json.loads((path / "manifest.json").read_text())
    index = manifest["index"]
    served = (f"{manifest['dim']}-d, {index['kind']} recall@{args.k} {index[f'recall@{args.k}']:.4f}" if index
              else f"score {manifest['score']['type']} (no embeddings, no index)")
    print(f"wrote {path}: {manifest['users']:,} users, {manifest['items']:,} items, {served}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from slifmr.export import load_export
    from slifmr.scorer import serve

    load_export(args.export)  # one line for a folder that is not an export
    return serve(args.export, args.host, args.port, args.replicas)


def _cmd_report(args: argparse.Namespace) -> int:
    from slifmr.report import report
    from slifmr.tune.results import TABLE, draw

    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / TABLE).exists():  # a sweep folder
        if args.out is not None:
            raise SlifmrError(f"--out applies to run folders: the table and plot of sweep {args.run_dirs[0]} "
                              "are re-drawn inside it")
        table, png = draw(Path(args.run_dirs[0]))
        print(table.read_text(), end="")
        print(f"metric against the most important parameters: {png}")
        return 0
    png, table = report([Path(d) for d in args.run_dirs], Path(args.out or "report"))
    print(table.read_text(), end="")
    print(f"learning curves: {png}")
    return 0


def _tracking_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracker", choices=CHOICES["train.tracker"],
                   help="send epochs, config and final metrics to TensorBoard (RUN/tensorboard), MLflow or W&B")
    p.add_argument("--tracking-uri", help="with --tracker mlflow: the store (default sqlite:///<runs folder>/mlflow.db; "
                   "file:DIR for MLflow's file store)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "train", "train a variant (in-process); no --data means the embedded ml-100k",
             "slifmr train --variant slifmr --epochs 100 --out runs/slifmr --set model.k_corr=20\n"
             "  slifmr train --workers 2 --max-failures 2 --out runs/slifmr-2w\n"
             "  slifmr train --workers 2 --strategy deepspeed --zero-stage 2 --out runs/slifmr-zero2\n"
             "  slifmr train --sampling neighbor --fanout 10,5 --out runs/slifmr-sampled\n"
             "  slifmr train --workers 4 --gpu --address 10.0.0.5:6379 --out /shared/runs/slifmr-gpu")
    p.add_argument("--data", help="dataset folder (default: the embedded ml-100k, prepared on first use)")
    p.add_argument("--out", help="run folder (default runs/<variant>-seed<seed>-<time>)")
    p.add_argument("--variant", help=f"{' | '.join(VARIANTS)} (default slifmr)")
    p.add_argument("--config", help="YAML file of config keys (model.*, train.*)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a config layer under --config and --variant: scale = history sampling, approximate kNN, "
                        "the ridge head sharded, 10,000 validation users (README 'Training at scale')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--epochs", type=cli_int(1))
    p.add_argument("--seed", type=cli_int(0))
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--workers", type=cli_int(0), default=0, help="Ray Train workers (0: in-process, no Ray)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (nccl); with --workers 0, this machine's GPU")
    p.add_argument("--strategy", choices=CHOICES["train.strategy"],
                   help="ddp (gradient all-reduce, the default) or deepspeed (ZeRO); needs --workers >= 1")
    p.add_argument("--zero-stage", type=cli_int(1, 2), help="with --strategy deepspeed: 1 (optimizer state) or 2 (and gradients, the default)")
    p.add_argument("--sampling", choices=CHOICES["train.sampling"],
                   help="full-graph propagation per step (the default), neighbor (two-hop sampled subgraphs) or "
                        "history (one sampled hop per step over historical embeddings: large graphs)")
    p.add_argument("--fanout", help="with --sampling neighbor: neighbours per hop, e.g. 10,5, or per relation: "
                                    "'10,5;kg=5,0' (relations rates, rated_by, correlates, similar, kg; -1 = all); "
                                    "with history the first hop's fan-outs sample every layer")
    p.add_argument("--max-failures", type=cli_int(0), default=0, help="worker-group restarts Ray may make")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    _tracking_flags(p)
    p.set_defaults(func=_cmd_train)

    p = _sub(sub, "evaluate", "re-evaluate the best model of a run (validation and test, every user)",
             "slifmr evaluate runs/slifmr\n  slifmr evaluate runs/slifmr --k 5,10,50")
    p.add_argument("run_dir")
    p.add_argument("--k", help="cut-offs K, e.g. 5,10,50 (default: the run's train.topk)")
    p.set_defaults(func=_cmd_evaluate)

    p = _sub(sub, "evaluate-recs", "score any system's recommendations (user, item, rank or score) with slifmr's "
             "metrics on a dataset's split", "slifmr evaluate-recs recs.parquet --data data/mine --k 10,20")
    p.add_argument("recs", help="Parquet or CSV table (or a folder) with columns user, item and rank (1 = best) "
                   "or score (higher = better); raw ids as in the dataset's source")
    p.add_argument("--data", required=True, help="the dataset folder whose split scores them")
    p.add_argument("--k", default="10,20", help="cut-offs K (default 10,20)")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.set_defaults(func=_cmd_evaluate_recs)

    p = _sub(sub, "recommend", "top-K items for some users, or for every user into Parquet (on Ray Data with --workers)",
             "slifmr recommend runs/slifmr --users 196,186 --k 10\n"
             "  slifmr recommend runs/slifmr --all --k 20 --out recs.parquet --workers 2\n"
             "  slifmr recommend runs/slifmr --all --k 20 --split test --out test-lists.parquet\n"
             "  slifmr recommend runs/slifmr --users 196 --history 50,181 --allow 1,2,3,4,5 --k 3")
    p.add_argument("run_dir")
    p.add_argument("--users", help="comma-separated user ids as in the source data; an id holding a comma or a "
                   "quote is CSV-quoted: --users '\"Doe, Jane\",196'")
    p.add_argument("--users-file", help="a text file of user ids, one per line, each taken whole (any id that imports)")
    p.add_argument("--all", action="store_true", help="every user (with --out)")
    p.add_argument("--k", type=cli_int(1), default=10)
    p.add_argument("--out", help="Parquet file for --all (user, rank, item, score with raw ids); with --workers a "
                   "folder of Parquet parts, each written by the actor that scored it (a local path or a pyarrow "
                   "URI such as s3://bucket/recs)")
    p.add_argument("--workers", type=cli_int(0), default=0, help="with --all: Ray Data actors that score batches of users "
                   "(0: this process)")
    p.add_argument("--gpu", action="store_true", help="with --workers: one GPU per actor")
    p.add_argument("--address", help="with --workers: Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--history", metavar="ID,ID", help="items the user interacted with since training (a user the run "
                   "does not know is folded in from them): scored and left out as the export's scorer does")
    p.add_argument("--allow", metavar="ID,ID", help="recommend only from these items")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=True,
                   help="leave out the items the user has (default); --no-exclude-seen keeps them")
    p.add_argument("--split", choices=["valid", "test"], help="with --all: lists to score on this split with "
                   "evaluate-recs: leave out only what its evaluation masks (train; train and valid), not every "
                   "seen item")
    p.set_defaults(func=_cmd_recommend)

    p = _sub(sub, "export", "export a run for serving: a numpy + faiss scorer (slifmr_scorer.py), embeddings, a faiss index, the ridge head, a "
             "manifest", "slifmr export runs/slifmr --out exports/slifmr")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="export folder (must not exist)")
    p.add_argument("--k", type=cli_int(1), default=20, help="K of the index's measured recall@K (default 20)")
    p.set_defaults(func=_cmd_export)

    p = _sub(sub, "serve", "serve an export over HTTP: POST /recommend, GET /health (numpy + faiss; the same server "
             "as `python EXPORT/slifmr_scorer.py`)",
             "slifmr serve exports/slifmr --port 8000\n"
             "  curl -s localhost:8000/recommend -d '{\"user\": \"196\", \"k\": 10}'")
    p.add_argument("export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=cli_int(0, 65535), default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--replicas", type=cli_int(1), default=1, help="server processes sharing the port (default 1)")
    p.set_defaults(func=_cmd_serve)

    p = _sub(sub, "report", "learning curves (PNG) and a comparison table of runs; or re-draw a sweep's table and plot",
             "slifmr report runs/lightgcn runs/slifmr --out report/\n  slifmr report runs/tune/fusion")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", help="folder for curves.png and table.md (default report/; not for a sweep folder)")
    p.set_defaults(func=_cmd_report)


def _cmd_tune(args: argparse.Namespace) -> int:
    from slifmr.tune.sweep import SweepInterrupted, run_sweep

    if (args.spec is None) == (args.resume is None):
        raise SlifmrError("give either a sweep file (tune_configs/*.yaml) or --resume SWEEP_DIR")
    if args.resume and any(v is not None for v in (args.samples, args.workers_per_trial, args.name, args.data,
                                                   args.tracker, args.tracking_uri)):
        raise SlifmrError("--resume continues a sweep as it was started: --samples, --workers-per-trial, --name, "
                          "--data and --tracker do not apply")
    if not args.resume:
        _check_tracking_uri(args.tracking_uri, args.tracker)
    try:
        best = run_sweep(args.spec, args.storage, args.name, args.samples, args.workers_per_trial, args.address,
                         args.resume, args.data, tracker=args.tracker, tracking_uri=args.tracking_uri)
    except SweepInterrupted as e:
        sys.stderr.write(f"{e}\n")
        return 130
    print(json.dumps(best, indent=2))
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "tune", "Ray Tune sweep (ASHA) of a tune_configs/*.yaml search space; every trial is a training run",
             "slifmr tune tune_configs/fusion.yaml --samples 16 --storage runs/tune\n"
             "  slifmr tune tune_configs/full.yaml --workers-per-trial 2 --address 10.0.0.5:6379 --storage /shared/tune\n"
             "  slifmr tune --resume runs/tune/fusion")
    p.add_argument("spec", nargs="?", help="sweep file (tune_configs/fusion.yaml, full.yaml, static.yaml, smoke.yaml)")
    p.add_argument("--samples", type=cli_int(1), help="trials (default: the file's samples)")
    p.add_argument("--workers-per-trial", type=cli_int(0), help="0: in the trial process; N: Ray Train with N workers")
    p.add_argument("--data", help="dataset folder (default: the file's data, else the embedded ml-100k)")
    p.add_argument("--name", help="sweep name (default: the file's stem)")
    p.add_argument("--storage", default="runs/tune", help="folder of sweeps (shared storage on a cluster)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    _tracking_flags(p)
    p.set_defaults(func=_cmd_tune)


# ----------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_data, _add_train, _add_tune]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slifmr", description="Distributed trainer for SLIF-MR multimodal recommendation.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # a usage error (one line, status 2) or --help: a status, as every other error
        return e.code if isinstance(e.code, int) else 2
    log.setup(level=30 if args.quiet else 20)
    try:
        return int(args.func(args) or 0)
    except SlifmrError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


__all__ = ["main", "build_parser"]
