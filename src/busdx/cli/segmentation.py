"""``busdx train|export|evaluate segmentation``. Heavy imports happen inside the commands."""

from __future__ import annotations

import logging

from busdx.cli import deprecated, name_value_pairs
from busdx.data.augment import AUGMENT_PRESETS

STAGING = "runs/release"

log = logging.getLogger(__name__)


def register(subparsers, groups) -> None:
    _register_train(groups["train"])
    _register_export(groups["export"])
    _register_evaluate(groups["evaluate"])


def _register_train(group) -> None:
    p = group.add_parser("segmentation", help="train the lesion segmentation U-Net",
                         description="Train the lesion segmentation U-Net on BUS-BRA.")
    p.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--test-fold", type=int, default=5, help="official fold held out (default 5)")
    p.add_argument("--out", default="runs/segmentation", help="run folder")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("dice", "dice_bce"), default="dice_bce")
    p.add_argument("--size", type=int, default=224,
                   help="letterboxed input size in pixels, a multiple of 32 (the export and the "
                   "product follow it; larger sees finer borders and costs time)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget: stop gracefully (the schedule anneals to fit)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that augment batches ahead of the model (worth it on a GPU; "
                   "the batches are the same for any number)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, batch order, augmentation")
    p.add_argument("--split-seed", type=int, default=0,
                   help="train/validation split by patient (keep it fixed to compare runs)")
    p.add_argument("--val-fold", type=int, default=None, metavar="K",
                   help="validate on the whole official fold K instead (not the test fold): "
                   "cross-validation of the training folds")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--architecture", choices=("lite_unet", "plain_unet"), default="lite_unet",
                   help="pretrained EfficientNet-Lite U-Net, or the recipe's plain U-Net")
    p.add_argument("--encoder", choices=("lite0", "lite1", "lite2"), default="lite0",
                   help="EfficientNet-Lite variant of lite_unet's encoder")
    p.add_argument("--no-pretrained", action="store_true", help="random encoder initialisation")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment", choices=AUGMENT_PRESETS, default="default",
                   help="augmentation preset (busdx.data.augment.AugmentConfig.preset); 'wide' "
                   "also zooms out, as for whole scans with a wider field of view")
    p.add_argument("--lesion-free-windows", action="store_true",
                   help="also train on each training image's lesion-free window with an empty "
                   "mask (busdx.data.windows): the network learns to outline nothing")
    p.add_argument("--breast", default=None, metavar="DIR",
                   help="a BrEaST-Lesions-USG folder: its development half joins the training "
                   "set as a second site (its test half is never read)")
    p.add_argument("--site-share", type=float, default=0.5,
                   help="with --breast: the share of each epoch drawn from it (default 0.5)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT|GRAPH.onnx:INDEX",
                   help="fine-tune trained weights: a run's best.pt, or member INDEX of an "
                   "exported segmenter (models/segmenter.onnx:0); give its --encoder")
    p.add_argument("--teacher", default=None, metavar="GRAPH",
                   help="distillation: an exported segmenter (the bundled ensemble, say) whose "
                   "lesion probability the network also learns, pixel by pixel, on training "
                   "images that show a lesion (the labels alone teach lesion-free ones)")
    p.add_argument("--teacher-weight", type=float, default=0.5, metavar="W",
                   help="with --teacher: the teacher's share of the loss (the labels' is 1 - W)")
    p.add_argument("--freeze-batch-norm", action="store_true",
                   help="keep the batch norms' statistics (eval mode) while the rest trains: "
                   "for fine-tuning a trained network (--init) on small or differently mixed "
                   "batches")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N images only")
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--cache-dir", default="cache", help="letterboxed-image cache ('' for none)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--config", metavar="FILE",
                   help="a recipe file (a run's config.json): its values, then the options "
                   "given here")
    p.add_argument("--note", default=None,
                   help="how the run was set up beyond its command (hardware quirks, copies of the "
                   "data); kept in the card")
    p.set_defaults(func=_train, parser=p)


def _train(args) -> int:
    from busdx.cli import config_with_file
    from busdx.training.segmentation import train_segmenter

    config = config_with_file(_train_config, args, args.parser, args.config)
    result = train_segmenter(config, command=args.invocation)
    if result.rank != 0:  # under torchrun, rank 0 reports for the run
        return 0
    print(f"best validation Dice {result.best_val_dice:.4f} at epoch {result.best_epoch} "
          f"({result.epochs_run} epochs, {result.seconds / 60:.1f} min, stopped: {result.stopped})"
          f"; checkpoint {result.out / 'best.pt'}")
    return 0


def _train_config(args):
    from busdx.models.segmentation import SegmenterConfig
    from busdx.training.segmentation import SegTrainConfig

    return SegTrainConfig(
        data=args.data, out=args.out, test_fold=args.test_fold, seed=args.seed,
        split_seed=args.split_seed, val_fold=args.val_fold,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
        patience=args.patience, max_minutes=args.max_minutes, threads=args.threads,
        workers=args.workers, size=args.size,
        device=args.device, augment=not args.no_augment, augment_preset=args.augment,
        limit_train=args.limit_train,
        lesion_free_windows=args.lesion_free_windows, init=args.init, breast=args.breast,
        site_share=args.site_share, teacher=args.teacher, teacher_weight=args.teacher_weight,
        freeze_batch_norm=args.freeze_batch_norm,
        limit_val=args.limit_val, cache_dir=args.cache_dir or None, resume=args.resume,
        note=args.note,
        model=SegmenterConfig(architecture=args.architecture, pretrained=not args.no_pretrained,
                              encoder=f"tf_efficientnet_{args.encoder}"),
    )


def _register_export(group) -> None:
    p = group.add_parser("segmentation", help="export a segmentation checkpoint to ONNX",
                         description="Export a trained segmenter to ONNX (opset 17, dynamic "
                         "batch) into a staging folder, with its release.json and provenance "
                         "beside it; `busdx release --from FOLDER` ships it.")
    p.add_argument("--checkpoint", nargs="*", default=[],
                   help="runs/NAME/best.pt; several: one graph averaging their logits (give "
                   "this, --onnx-member, or both)")
    p.add_argument("--out", default=f"{STAGING}/segmenter.onnx",
                   help="the graph to write, in a staging folder (not models/; the default "
                   "folder starts as a copy of the bundled release)")
    p.add_argument("--no-evidence", action="store_true",
                   help="write the graph only: no release.json or evidence beside it")
    deprecated(p, "--card", "(nothing: the release beside --out is updated)", dest="card")
    p.add_argument("--compare-runs", nargs="*", default=[],
                   help="run folders of a loss comparison to record in the card")
    p.add_argument("--compare-architectures", nargs="*", default=[],
                   help="run folders of an architecture comparison (e.g. lite_unet vs "
                   "plain_unet) to record in the card")
    p.add_argument("--tta", choices=("none", "hflip"), default="none",
                   help="bake horizontal-flip test-time augmentation into the graph")
    p.add_argument("--onnx-member", action="append", default=[], metavar="GRAPH:INDEX",
                   help="add member INDEX of an exported (ensemble) graph to the ensemble, for a "
                   "network whose checkpoint is gone; its card entry is kept when --card "
                   "describes GRAPH (repeatable)")
    p.add_argument("--storage", choices=("float32", "float16"), default="float32",
                   help="how the file keeps the weights: float16 halves it, and ONNX Runtime "
                   "still computes in float32 (busdx.models.storage); evaluate the result as "
                   "you would a new network")
    p.set_defaults(func=_export)


def _export(args) -> int:
    from pathlib import Path

    from busdx.cli import writable_release
    from busdx.evaluation.model_card import load_card, update_card
    from busdx.training.segmentation import (
        OnnxMember,
        export_with_provenance,
        write_member_histories,
    )

    record = not args.no_evidence and getattr(args, "card", None) != ""
    folder = Path(args.out).parent
    if record:
        writable_release(str(folder), STAGING)
    # read before the export: --out may overwrite the graph a member comes from
    described = {}
    for text in args.onnx_member:
        graph = Path(text.rsplit(":", 1)[0]).parent
        described = described or load_card(graph).get("segmenter", {})
    onnx_members = [OnnxMember.parse(text, described) for text in args.onnx_member]
    section = export_with_provenance([Path(c) for c in args.checkpoint], Path(args.out),
                                     [Path(p) for p in args.compare_runs],
                                     hflip_tta=args.tta == "hflip",
                                     architecture_runs=[Path(p) for p in args.compare_architectures],
                                     onnx_members=onnx_members, storage=args.storage)
    if record:
        # a new graph has none of the checks fitted on the old one's features: they are
        # fitted again (busdx evaluate appearance, busdx evaluate presence)
        update_card(folder, "segmenter", {**section, "file": Path(args.out).name,
                                          "presence_threshold": None})
        update_card(folder, "input_check", {"appearance_threshold": None})
        # the report's learning curves must be those of the networks in this graph
        write_member_histories(section["members"], folder)
    print(f"wrote {args.out} ({section['onnx_megabytes']} MB); ONNX Runtime vs torch: max "
          f"|difference| of the logits {section['onnx_vs_torch_max_abs_diff']:.2e}")
    return 0


def _register_evaluate(group) -> None:
    p = group.add_parser("segmentation", help="evaluate the ONNX segmenter on the test fold",
                         description="Dice and IoU of the exported segmenter on the test fold, "
                         "at each image's original resolution (ONNX Runtime only).")
    p.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    p.add_argument("--test-fold", type=int, default=5)
    p.add_argument("--models", default="models", metavar="DIR",
                   help="the release to score (its segmenter.onnx); the results are evidence "
                   "about it (the bundled models' go to evidence/)")
    p.add_argument("--no-evidence", action="store_true", help="print only: write no evidence")
    deprecated(p, "--model", "--models DIR", dest="model")
    deprecated(p, "--card", "--models DIR", dest="card")
    p.add_argument("--figures", default=None,
                   help="folder for the examples figure and the per-image CSV")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the test fold, or the patient-wise validation split of the other folds "
                   "(for choices made on validation; written as 'validation' in the card)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--split-seed", type=int, default=0,
                   help="with --split val, --candidate or --thresholds: the validation patients "
                   "the graph's training run used (its --split-seed)")
    p.add_argument("--val-fold", type=int, default=None, metavar="K",
                   help="with --split val, --candidate or --thresholds: validate on official fold "
                   "K, as a training run given --val-fold K did")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=GRAPH",
                   help="choose among candidate graphs on the VALIDATION split instead: each is "
                   "scored, the choice is recorded as evidence segmenter.selection (repeatable)")
    deprecated(p, "--compare", "--candidate", append=True, dest="candidate")
    p.add_argument("--baseline", default=None, metavar="NAME",
                   help="with --candidate: the graph shipped now, kept unless beaten by --min-gain")
    p.add_argument("--min-gain", type=float, default=0.001,
                   help="with --candidate and --baseline: validation Dice a candidate must gain")
    p.add_argument("--not-eligible", action="append", default=[], metavar="NAME=WHY",
                   help="with --candidate: score NAME for the record but never choose it")
    p.add_argument("--thresholds", default=None, metavar="T[,T...]",
                   help="sweep the mask threshold on the VALIDATION split instead: the served "
                   "threshold (the card's) moves only if another beats it by --min-gain; the "
                   "sweep goes to the card's segmenter.threshold_sweep")
    p.set_defaults(func=_evaluate)


def _select(args) -> int:
    from pathlib import Path

    from busdx.evaluation.model_card import record_round
    from busdx.evaluation.segmentation import card_threshold, select_segmenter

    candidates = {n: Path(p) for n, p in name_value_pairs(args.candidate, "--candidate").items()}
    selection = select_segmenter(args.data, candidates, args.test_fold, args.baseline,
                                 args.min_gain,
                                 name_value_pairs(args.not_eligible, "--not-eligible"),
                                 args.threads, threshold=card_threshold(_card(args)),
                                 split_seed=args.split_seed, val_fold=args.val_fold)
    selection["command"] = args.invocation
    if _card(args):
        record_round(_card(args), "segmenter", "selection", selection)
    width = max(map(len, selection["val_dice_original_resolution"])) + 2
    for name, value in selection["val_dice_original_resolution"].items():
        flag = " (not eligible)" if name in selection["not_eligible"] else ""
        flag += "  <- chosen" if name == selection["chosen"] else ""
        print(f"{name:<{width}}{value:.4f}{flag}")
    return 0


def _sweep(args) -> int:
    from busdx.errors import BusdxError
    from busdx.evaluation.model_card import update_card
    from busdx.evaluation.segmentation import card_threshold, sweep_thresholds

    if args.candidate:
        raise BusdxError("--thresholds and --candidate are separate runs: choose the graph "
                         "first")
    try:
        grid = [float(t) for t in args.thresholds.split(",") if t.strip()]
    except ValueError as err:
        raise BusdxError(f"--thresholds takes numbers separated by commas: {err}") from err
    if not grid:
        raise BusdxError("--thresholds needs at least one threshold")
    current = card_threshold(_card(args))
    sweep = sweep_thresholds(args.data, _graph(args), grid, args.test_fold, current, args.min_gain,
                             args.threads, split_seed=args.split_seed, val_fold=args.val_fold)
    sweep["command"] = args.invocation
    if _card(args):
        values = {"threshold_sweep": sweep}
        if sweep["chosen"] != current:
            values["threshold"] = sweep["chosen"]
            log.warning("segmenter.threshold moved from %g to %g: the classifier's crops come "
                        "from these masks, so recalibrate it (busdx train classification "
                        "--calibrate-only) and evaluate both again", current, sweep["chosen"])
        update_card(_card(args), "segmenter", values)
    for key, value in sweep["val_dice_by_threshold"].items():
        flag = "  <- served" if float(key) == sweep["chosen"] else ""
        print(f"threshold {key:<6}{value:.4f}{flag}")
    return 0


def _evaluate(args) -> int:
    from busdx.evaluation.segmentation import evaluate_segmenter

    if args.thresholds is not None:
        return _sweep(args)
    if args.candidate:
        return _select(args)
    result = evaluate_segmenter(args.data, _graph(args), args.test_fold, _card(args),
                                args.figures, args.threads, split=args.split,
                                split_seed=args.split_seed, val_fold=args.val_fold)
    s = result.section
    print(f"{args.split} (test fold {s['test_fold']}), {s['images']} images, "
          "original resolution")
    width = max(len(k) for k in ["all", *s["dice_per_scanner"]]) + 2
    print(f"{'':<{width}}{'n':>5}{'Dice':>16}{'IoU':>16}")
    rows = [("all", s["dice"], s["iou"])]
    rows += [(k, v, s["iou_per_scanner"][k]) for k, v in s["dice_per_scanner"].items()]
    for name, d, i in rows:
        print(f"{name:<{width}}{d['n']:>5}{d['mean']:>9.4f} ± {d['std']:.3f}"
              f"{i['mean']:>9.4f} ± {i['std']:.3f}")
    post = s["postprocessed"]
    print(f"postprocessed (largest component, holes filled): Dice {post['dice']['mean']:.4f}, "
          f"IoU {post['iou']['mean']:.4f}")
    return 0


def _graph(args):
    """The segmenter graph to score: --models' (or the deprecated --model's)."""
    from pathlib import Path

    from busdx.models.contract import SEGMENTER_FILE

    return Path(args.model) if getattr(args, "model", None) else Path(args.models) / SEGMENTER_FILE


def _card(args):
    """The release folder the results are evidence about; None: write none."""
    from pathlib import Path

    if args.no_evidence or getattr(args, "card", None) == "":
        return None
    if getattr(args, "card", None):
        return Path(args.card).parent if Path(args.card).suffix == ".json" else Path(args.card)
    return _graph(args).parent
