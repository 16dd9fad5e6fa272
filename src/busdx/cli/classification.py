"""``busdx train|evaluate|export classification``.

Heavy libraries are imported inside the command functions: ``evaluate`` needs only ONNX
Runtime (it runs from the serving install), ``train`` and ``export`` need torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from busdx.cli import deprecated
from busdx.data.augment import AUGMENT_PRESETS
from busdx.errors import BusdxError

log = logging.getLogger(__name__)

DEFAULT_MODELS = "models"  # what evaluation reads
STAGING = "runs/release"  # what export and calibration write; `busdx release` ships it
DEFAULT_RUN = "runs/classification"


def register(subparsers, groups) -> None:
    train = groups["train"].add_parser(
        "classification", help="fine-tune the benign/malignant classifier",
        description="Fine-tune on lesion crops (ground-truth masks with jitter), pick the epoch "
        "by validation AUC and fit temperature and threshold on validation, all in the run "
        "folder (--out). With --models DIR it also exports the graph into the staging folder "
        "DIR; `busdx release --from DIR` ships it. Never writes models/.",
    )
    train.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    train.add_argument("--test-fold", type=int, default=5)
    train.add_argument("--out", default=DEFAULT_RUN, help="run folder (checkpoint, history)")
    train.add_argument("--models", default=None, metavar="DIR",
                       help="also export into this staging folder (not models/); with "
                       f"--calibrate-only the folder to calibrate (default {STAGING}, which "
                       "starts as a copy of the bundled release)")
    train.add_argument("--arch", choices=("lite0", "lite1", "lite2", "resnet50"), default="lite0")
    train.add_argument("--weights", default="imagenet",
                       help="imagenet (lite0: offline; resnet50: torchvision, online), none, "
                       "or a state-dict file (resnet50)")
    train.add_argument("--input", choices=("crop", "image", "both"), default="crop")
    train.add_argument("--context", type=float, default=0.3)
    train.add_argument("--jitter", type=float, default=0.15)
    train.add_argument("--imbalance", choices=("weighted", "oversample", "none"),
                       default="weighted")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--max-minutes", type=float, default=35.0)
    train.add_argument("--batch-size", type=int, default=24)
    train.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    train.add_argument("--backbone-lr", type=float, default=2e-4)
    train.add_argument("--patience", type=int, default=6)
    train.add_argument("--ema", type=float, default=0.0,
                       help="validate and save an exponential moving average of the weights "
                       "with this per-step decay (0: off)")
    train.add_argument("--max-batches", type=int, default=None, help="per epoch (smoke tests)")
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    train.add_argument("--workers", type=int, default=0,
                       help="processes that prepare batches ahead of the model (worth it on a "
                       "GPU; the batches are the same for any number)")
    train.add_argument("--min-sensitivity", type=float, default=0.90,
                       help="the threshold keeps at least this validation sensitivity")
    train.add_argument("--compare-inputs", action="store_true",
                       help="first compare inputs and imbalance handling on frozen features")
    deprecated(train, "--compare", "--compare-inputs", nargs=0, dest="compare_inputs")
    train.add_argument("--comparisons-from", default=None,
                       help="a comparisons.json written by an earlier --compare run")
    deprecated(train, "--no-export", "(nothing: training exports only with --models)",
               nargs=0, dest="no_export")
    train.add_argument("--calibrate-only", action="store_true",
                       help="no training: refit temperature and threshold on the validation "
                       "images through the exported models in --models, cropping with --masks")
    train.add_argument("--masks", choices=("predicted", "gt"), default="predicted",
                       help="with --calibrate-only: which masks crop the validation images")
    train.add_argument("--checkpoint", default=[f"{DEFAULT_RUN}/classifier.pt"], nargs="+",
                       help="with --calibrate-only: the checkpoint to export; several: each "
                       "alone and all averaged in one graph are compared on validation")
    train.add_argument("--contexts", default=None,
                       help="with --calibrate-only: comma-separated crop contexts whose logits "
                       "are averaged (e.g. 0.15,0.3,0.45); shipped only if validation AUC beats "
                       "the single crop at the card's context")
    train.add_argument("--tta", choices=("none", "flip", "flip_crop", "auto"), default="auto",
                       help="with --calibrate-only: mirror averaging in the graph (flip_crop: "
                       "only a two-view model's crop); auto compares them on validation")
    train.add_argument("--auc-tolerance", type=float, default=0.005,
                       help="with --calibrate-only: among mirror/crop options, ship the cheapest "
                       "whose validation AUC is within this of the best (each doubles or "
                       "triples the classifier's time)")
    train.add_argument("--max-passes", type=int, default=None,
                       help="with --calibrate-only: only options with at most this many network "
                       "passes per image (members x views x crops x mirror) compete: the "
                       "latency budget")
    train.add_argument("--why", default=None, metavar="TEXT",
                       help="with --calibrate-only: why the shipped option was chosen when the "
                       "option rule alone would not pick it (a rule fixed in advance, say, and "
                       "where its evidence lies); kept in the card")
    train.add_argument("--storage", choices=("float32", "float16"), default="float32",
                       help="how the graph stores its weights: float16 halves the file (computed in "
                       "float32 all the same; calibration fits the stored graph)")
    train.add_argument("--cache", default="cache/classification")
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--seed", type=int, default=0,
                       help="initialisation, batch order, augmentation")
    train.add_argument("--augment", choices=AUGMENT_PRESETS, default="default",
                       help="augmentation preset (busdx.data.augment.AugmentConfig.preset): "
                       "strong widens gain, contrast, blur and speckle and adds down-sampling")
    train.add_argument("--split-seed", type=int, default=0,
                       help="train/validation split by patient: keep it fixed so that runs of "
                       "different --seed share validation patients (and can be ensembled and "
                       "calibrated on them)")
    train.add_argument("--val-fold", type=int, default=None, metavar="K",
                       help="validate on the whole official fold K instead (one of the folds "
                       "besides --test-fold): K = 1..4 with test fold 5 is a 4-fold "
                       "cross-validation of the training folds")
    train.add_argument("--aux-weight", type=float, default=0.0, metavar="W",
                       help="also learn the histology group and the BI-RADS category of each "
                       "training image (bus_data.csv) from the pooled features, each "
                       "cross-entropy weighted W (0: off); the auxiliary head is dropped, so "
                       "the exported graph is unchanged in form")
    train.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="fine-tune trained weights instead of ImageNet's: a run's "
                       "classifier.pt, or one rebuilt from a bundled graph by `busdx export "
                       "classification --recover`; give its --arch and --input")
    train.add_argument("--teacher", default=None, metavar="GRAPH",
                       help="distillation: an exported classifier graph of the same input (the "
                       "bundled ensemble, say) whose logit the network also learns to match on "
                       "each augmented batch, so that one network can carry an ensemble's gain")
    train.add_argument("--teacher-weight", type=float, default=0.5, metavar="W",
                       help="with --teacher: the teacher's share of the loss (the labels' is "
                       "1 - W)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument("--config", metavar="FILE",
                       help="a recipe file (a run's config.json): its values, then the options "
                       "given here")
    train.set_defaults(func=run_train, parser=train)

    evaluate = groups["evaluate"].add_parser(
        "classification", help="end-to-end test-fold metrics of the exported models (ONNX only)"
    )
    evaluate.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    evaluate.add_argument("--test-fold", type=int, default=5)
    evaluate.add_argument("--models", default=DEFAULT_MODELS)
    evaluate.add_argument("--masks", choices=("predicted", "gt"), default="predicted",
                          help="crop from the segmenter's masks (the product) or the ground truth")
    evaluate.add_argument("--figures", default=None, help="folder for ROC, confusion, reliability")
    evaluate.add_argument("--reps", type=int, default=2000, help="bootstrap repetitions")
    evaluate.add_argument("--threads", type=int, default=1)
    evaluate.add_argument("--no-evidence", action="store_true",
                          help="print only: write no evidence record")
    deprecated(evaluate, "--no-card", "--no-evidence", nargs=0, dest="no_evidence")
    evaluate.add_argument("--candidate", action="append", default=[], metavar="NAME=FOLDER",
                          help="record a choice of ensemble members made on VALIDATION instead: "
                          "each FOLDER holds the card that `train classification --calibrate-only "
                          "--models FOLDER` wrote for one candidate ensemble (repeatable); the "
                          "choice is recorded as evidence classifier.member_selection")
    deprecated(evaluate, "--compare", "--candidate", append=True)
    evaluate.add_argument("--baseline", default=None, metavar="NAME",
                          help="with --compare: the ensemble shipped before, kept unless beaten "
                          "by --min-gain")
    evaluate.add_argument("--min-gain", type=float, default=0.005,
                          help="with --compare: validation AUC a candidate must gain")
    evaluate.add_argument("--rule", default=None,
                          help="with --compare: the pre-registered rule, in words, for the card")
    evaluate.add_argument("--run", action="append", default=[], metavar="CHECKPOINT",
                          help="with --compare: a newly trained network to record (its "
                          "training.json lies beside it; repeatable)")
    evaluate.add_argument("--fit-lesion-reading", action="store_true",
                          help="first fit the lesion reading's threshold (rule X) on the "
                               "validation images of --split-seed / --val-fold, predicted masks, "
                               "and write it to the card")
    evaluate.add_argument("--split-seed", type=int, default=0,
                          help="the bundled models' validation split (with --fit-lesion-reading)")
    evaluate.add_argument("--val-fold", type=int, default=None, metavar="K",
                          help="a whole fold as validation (with --fit-lesion-reading)")
    evaluate.add_argument("--note", default=None,
                          help="with --compare: a note for the card (where the runs trained, say)")
    evaluate.set_defaults(func=run_evaluate)

    soup = groups["train"].add_parser(
        "soup", help="average the weights of classifiers trained alike (a model soup)",
        description="Average classifier checkpoints fine-tuned from the same pretrained weights "
        "with the same recipe and split (seeds differ) into one network of one network's cost. "
        "Batch norms are folded first. The soup is scored on VALIDATION (ground-truth crops, as "
        "training scores); ship it with `busdx train classification --calibrate-only "
        "--checkpoint OUT/classifier.pt ...` like any run.")
    soup.add_argument("--checkpoint", nargs="+", required=True,
                      help="the ingredients; for --method greedy, best validation AUC first")
    soup.add_argument("--method", choices=("uniform", "greedy"), default="uniform",
                      help="uniform: the mean of all; greedy: each kept only if the soup's "
                      "validation AUC does not drop")
    soup.add_argument("--out", required=True, help="folder for classifier.pt and training.json")
    soup.add_argument("--data", help="BUS-BRA root (default: $BUSDX_DATA)")
    soup.add_argument("--test-fold", type=int, default=5)
    soup.add_argument("--split-seed", type=int, default=None,
                      help="default: the one the ingredients were trained with")
    soup.add_argument("--val-fold", type=int, default=None,
                      help="default: the one the ingredients were trained with")
    soup.add_argument("--cache", default="cache/classification")
    soup.add_argument("--threads", type=int, default=1)
    soup.set_defaults(func=run_soup)

    export = groups["export"].add_parser("classification", help="checkpoint -> classifier.onnx")
    export.add_argument("--checkpoint", default=f"{DEFAULT_RUN}/classifier.pt")
    export.add_argument("--out", default=f"{STAGING}/classifier.onnx",
                        help="the graph to write, in a staging folder (not models/)")
    deprecated(export, "--output", "--out")
    export.add_argument("--tta", choices=("none", "flip", "flip_crop"), default="none",
                        help="flip: average the input and its mirror inside the graph; "
                        "flip_crop: a two-view model's crop only")
    export.add_argument("--storage", choices=("float32", "float16"), default="float32",
                        help="how the graph stores its weights (float16 halves the file)")
    export.add_argument("--no-evidence", action="store_true",
                        help="write the graph only: no release.json or evidence beside it")
    deprecated(export, "--no-card", "--no-evidence", nargs=0, dest="no_evidence")
    export.add_argument("--recover", default=None, metavar="CHECKPOINT",
                        help="the other way round: rebuild the network of the exported --output "
                        "graph (described by the card beside it) as CHECKPOINT, when the "
                        "training run's checkpoint is gone; batch norms stay folded, so it is "
                        "for calibration and export, not for more training. An ensemble graph "
                        "gives one checkpoint per member, in folders named ARCH_INPUT beside "
                        "CHECKPOINT")
    export.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation.model_card import update_card
    from busdx.models.classification import backbone_name, export_onnx
    from busdx.models.contract import CLASSIFIER_FILE
    from busdx.training import classification as tc
    from busdx.training.calibration import threshold_rule
    from busdx.training.common import hardware_description

    if args.calibrate_only:
        return run_calibrate(args)
    start = time.monotonic()
    torch.set_num_threads(args.threads)
    try:  # built before any data is read, so a bad value costs nothing
        from busdx.cli import config_with_file

        config = config_with_file(_train_config, args, args.parser, args.config)
    except ValueError as err:
        raise BusdxError(str(err)) from err
    # read before the data: a refused teacher or --init leaves no empty --out folder behind
    starts = tc.read_starts(config)
    index = load_index(config.data)
    split = make_split(index, SplitConfig(test_fold=config.test_fold, seed=config.split_seed,
                                          val_fold=config.val_fold))
    train = tc.load_samples(split.train, args.cache)
    val = tc.load_samples(split.val, args.cache)
    log.info("train %d, val %d (test fold %d untouched)", len(train), len(val), config.test_fold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    comparisons = None
    if args.comparisons_from:
        comparisons = json.loads(Path(args.comparisons_from).read_text())
    if args.compare_inputs:
        comparisons = tc.feature_comparisons(train, val, config)
        (out / "comparisons.json").write_text(json.dumps(comparisons, indent=2))
        log.info("comparisons: %s", json.dumps(comparisons, indent=1))

    aux = tc.auxiliary_targets(split.train) if config.aux_weight > 0 else None
    result = tc.train_classifier(train, val, config, out, aux=aux, starts=starts)
    if result.rank != 0:  # under torchrun, rank 0 calibrates, records and exports the run
        return 0
    model, ckpt = tc.load_checkpoint(result.checkpoint)
    cal, _, _ = tc.calibrate_on_validation(model, val, config, args.min_sensitivity)
    (out / "calibration.json").write_text(json.dumps(asdict(cal), indent=2))
    log.info("calibration on validation: %s", json.dumps(asdict(cal)))
    _plot_history(result.history, out / "learning_curves.png")
    training = {
        "command": args.invocation,
        "config": asdict(config),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": result.history,
        "wall_minutes": round((time.monotonic() - start) / 60, 1),
        "hardware": hardware_description(result.device, args.threads),
        "n_train": len(train), "n_val": len(val),
        "validation_crops": "ground-truth masks, no jitter",
    }
    if config.teacher:  # the graph's file alone: training already checked it can teach
        from busdx.training.distill import teacher_record

        training["teacher"] = teacher_record(config.teacher, "logit")
    # beside the checkpoint: --calibrate-only may ship this run later, or with others
    (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    if args.models is None:
        log.info("trained in %s; export with --models DIR, ship with `busdx release`", out)
        return 0

    from busdx.cli import writable_release

    models = writable_release(args.models, STAGING)
    export_onnx(model, models / CLASSIFIER_FILE, size=config.size, storage=args.storage)
    # busdx report draws the learning curves from this file
    (models / "classifier_history.json").write_text(json.dumps(result.history, indent=2))
    section = {
        "file": CLASSIFIER_FILE,
        "weights_storage": args.storage,
        "arch": args.arch,
        "backbone": backbone_name(args.arch),
        "weights": args.weights,
        "input": config.input,
        "crop": {"size": config.size, "context": config.context},
        "temperature": cal.temperature,
        "threshold": cal.threshold,
        "logit_offset": 0.0,  # set by --calibrate-only (Platt), which re-exports
        "tta": "none",
        "threshold_rule": threshold_rule(args.min_sensitivity),
        "calibration": {**asdict(cal), "masks": "ground truth (no jitter)", "engine": "torch"},
        "training": training,
        "cam": "exact: cam[p] = w . f[p], mean(cam) + bias == logit (GAP + linear head)"
        if args.arch.startswith("lite") else "Grad-CAM before ReLU (head linearised at the image)",
    }
    if comparisons is not None:
        section["comparisons"] = comparisons
    update_card(models, "classifier", section)
    log.info("exported %s and updated %s", models / CLASSIFIER_FILE, models)
    return 0


def _train_config(args: argparse.Namespace):
    from busdx.training import classification as tc

    return tc.ClassifierTrainConfig(
        data=args.data, test_fold=args.test_fold,
        arch=args.arch, weights=args.weights, input=args.input, context=args.context,
        jitter=args.jitter, imbalance=args.imbalance, epochs=args.epochs,
        max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
        backbone_lr=args.backbone_lr, patience=args.patience, ema=args.ema,
        threads=args.threads, device=args.device, workers=args.workers,
        seed=args.seed, split_seed=args.split_seed, max_batches=args.max_batches,
        val_fold=args.val_fold, augment=args.augment, aux_weight=args.aux_weight,
        teacher=args.teacher, teacher_weight=args.teacher_weight, init=args.init,
        resume=args.resume,
    )


def run_soup(args: argparse.Namespace) -> int:
    import torch

    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split, validation_name
    from busdx.training import classification as tc
    from busdx.training.soup import make_soup

    torch.set_num_threads(args.threads)
    missing = [c for c in args.checkpoint if not Path(c).is_file()]
    if missing:
        raise BusdxError(f"no checkpoint at {', '.join(missing)}")
    first = torch.load(args.checkpoint[0], map_location="cpu", weights_only=False)
    config = tc.ClassifierTrainConfig.from_record(first["config"])
    split_seed = config.split_seed if args.split_seed is None else args.split_seed
    val_fold = config.val_fold if args.val_fold is None else args.val_fold
    split = make_split(load_index(args.data), SplitConfig(test_fold=args.test_fold,
                                                          seed=split_seed, val_fold=val_fold))
    val = tc.load_samples(split.val, args.cache)
    log.info("scoring on %d validation images (%s; test fold %d untouched)", len(val),
             validation_name(split_seed, val_fold), args.test_fold)
    result = make_soup(args.checkpoint, args.method, args.out,
                       lambda model: tc.validation_auc(model, val, config),
                       command=args.invocation)
    print(f"{result.method} soup of {sum(i.kept for i in result.ingredients)} of "
          f"{len(result.ingredients)}: validation AUC {result.val_auc:.4f} -> {result.checkpoint}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Export the checkpoint and fit its operating point on VALIDATION through the exported
    graph, cropping as the product does (``--masks predicted``: the segmenter's masks).

    With ``--tta auto`` the graph with and without mirror averaging are both scored on
    validation and the better AUC is shipped. Platt's intercept is folded into the exported
    bias, so the card's temperature alone calibrates.
    """
    from dataclasses import replace

    import numpy as np

    from busdx.cli import writable_release
    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split, validation_name
    from busdx.evaluation.classification import (
        crop_logits,
        fit_operating_point,
        record_inputs,
        roc_auc,
    )
    from busdx.evaluation.model_card import load_card, update_card
    from busdx.inference.models import Models
    from busdx.models.classification import ClassifierEnsemble, backbone_name, export_onnx
    from busdx.models.contract import CLASSIFIER_FILE, input_views
    from busdx.training.classification import load_checkpoint, recorded_config

    models = writable_release(args.models or STAGING, STAGING)
    card_path = models
    split = make_split(load_index(args.data), SplitConfig(
        test_fold=args.test_fold, seed=args.split_seed, val_fold=args.val_fold))
    loaded = {Path(c).parent.name or str(c): (Path(c), *load_checkpoint(c)) for c in args.checkpoint}
    for name, (_, _, ckpt) in loaded.items():
        # calibrating on images a network trained on would flatter it
        trained = (ckpt["config"].get("split_seed", 0), ckpt["config"].get("val_fold"))
        if trained != (args.split_seed, args.val_fold):
            raise BusdxError(f"{name} was validated on {validation_name(*trained)}, not on "
                             f"{validation_name(args.split_seed, args.val_fold)}: pass the same "
                             "--split-seed / --val-fold")
    sizes = {int(ckpt["config"]["size"]) for _, _, ckpt in loaded.values()}
    if len(sizes) != 1:
        raise BusdxError(f"the checkpoints were trained at different sizes: {sorted(sizes)}")
    size = sizes.pop()
    # what each network sees: the crop, the whole image, or both (see busdx.inference.pipeline)
    kinds = {name: ckpt["config"].get("input", "crop") for name, (_, _, ckpt) in loaded.items()}
    model_options = {name: [name] for name in loaded}
    groups: dict[str, list[str]] = {}
    for name, kind in kinds.items():
        groups.setdefault(kind, []).append(name)
    for kind, names in groups.items():
        if len(names) > 1 and kind != "both":  # ensembles of single-view networks only
            model_options["ensemble" if len(groups) == 1 else f"ensemble_{kind}"] = names
    if "both" in groups and "crop" in groups:
        # two-view networks plus crop networks: the crop ones see view 0 (see ClassifierEnsemble)
        model_options["ensemble_both_crop"] = groups["both"] + groups["crop"]

    def option_kind(option: str) -> str:
        names = model_options[option]
        return "both" if any(kinds[n] == "both" for n in names) else kinds[names[0]]
    product = Models.load(models, threads=args.threads)
    primary = product.settings.crop.context
    multi = _parse_contexts(args.contexts) if args.contexts else product.settings.all_contexts
    union = tuple(sorted(set(multi) | {primary}))
    inputs, empty = {}, {}
    for kind in sorted(set(kinds.values())):
        product.settings = replace(product.settings, contexts=union, input=kind)
        inputs[kind], empty[kind] = record_inputs(split.val, product, args.masks)
    y = [r.label for r in split.val]
    crop_options = {"single": (primary,)}
    if multi != (primary,):
        crop_options["multi"] = multi

    def averaged(per_crop: list[np.ndarray], contexts: tuple[float, ...]) -> np.ndarray:
        # images without a lesion have one whole-image logit, used by every option
        picks = [union.index(c) for c in contexts]
        return np.array([z.mean() if len(z) == 1 else z[picks].mean() for z in per_crop])

    def build(option: str):
        members = [loaded[name][1] for name in model_options[option]]
        return members[0] if len(members) == 1 else ClassifierEnsemble(members).eval()

    scores = {}
    for option in model_options:
        model = build(option)
        kind = option_kind(option)
        for tta in _tta_options(args.tta, kind, ensemble=len(model_options[option]) > 1):
            tmp = models / f".{tta}.{CLASSIFIER_FILE}"
            export_onnx(model, tmp, size=size, tta=tta, storage=args.storage)
            per_crop = crop_logits(tmp, inputs[kind])  # every crop once; options average subsets
            for crops, contexts in crop_options.items():
                logits = averaged(per_crop, contexts)
                scores[(option, tta, crops)] = (roc_auc(y, logits), logits)
                log.info("validation AUC of %s with tta=%s, crops %s %s: %.4f", option, tta,
                         crops, contexts, scores[(option, tta, crops)][0])
            tmp.unlink()
    # network passes per crop: one per member and view (crop + whole image is two)
    passes = {option: sum(input_views(kinds[n]) for n in names)
              for option, names in model_options.items()}
    option, tta, crops = _cheapest_within(scores, passes, crop_options, args.auc_tolerance,
                                          args.max_passes)
    chosen = crop_options[crops]
    values = fit_operating_point(scores[(option, tta, crops)][1], y, args.min_sensitivity)
    export_onnx(build(option), models / CLASSIFIER_FILE, size=size, tta=tta,
                logit_offset=values["logit_offset"], storage=args.storage)
    members = [loaded[name] for name in model_options[option]]
    kind = option_kind(option)
    values["input"] = kind
    values["calibration"].update({
        "masks": "predicted" if args.masks == "predicted" else "ground truth",
        "empty_masks": empty[kind], "engine": "onnxruntime",
        "command": args.invocation,
        "checkpoint_epoch": members[0][2].get("epoch") if len(members) == 1
        else [ckpt.get("epoch") for _, _, ckpt in members],
    })
    values["checkpoints"] = [str(path) for path, _, _ in members]
    values["members"] = [
        {"checkpoint": str(path), "arch": ckpt["spec"]["arch"], "epoch": ckpt.get("epoch"),
         "val_auc_training": ckpt.get("val_auc"), "config": recorded_config(ckpt["config"])}
        for path, _, ckpt in members
    ]
    for member, (_, _, ckpt) in zip(values["members"], members, strict=True):
        if ckpt.get("recovered_from"):  # rebuilt from a bundled graph (export --recover)
            member["recovered_from"] = ckpt["recovered_from"]
    values["arch"] = "+".join(m["arch"] for m in values["members"])
    values["backbone"] = " + ".join(backbone_name(m["arch"]) for m in values["members"])
    values["ensemble"] = (f"{len(members)} classifiers, logits averaged in one graph"
                          if len(members) > 1 else None)
    # how the shipped network(s) were trained, written by the training run beside each checkpoint
    for member, (path, _, _) in zip(values["members"], members, strict=True):
        record = path.parent / "training.json"
        if record.is_file():
            member["training"] = json.loads(record.read_text())
    if "training" in values["members"][0]:
        values["training"] = values["members"][0]["training"]
        (models / "classifier_history.json").write_text(
            json.dumps(values["training"].get("history", []), indent=2))
    values["tta"] = tta
    values["option_note"] = args.why  # None clears an earlier choice's reason
    values["weights_storage"] = args.storage
    values["option_rule"] = (f"fewest classifier passes within {args.auc_tolerance} validation AUC "
                             "of the best option (model, mirror averaging, crops)"
                             + (f", among options of at most {args.max_passes} passes"
                                if args.max_passes else ""))
    values["candidates"] = {
        name: {"checkpoint": str(path), "arch": ckpt["spec"]["arch"], "input": kinds[name],
               "epoch": ckpt.get("epoch"), "val_auc_training": ckpt.get("val_auc"),
               "passes_per_crop": passes[name]}
        for name, (path, _, ckpt) in loaded.items()
    }
    values["crop"] = {"size": product.settings.crop.size, "context": primary,
                      "contexts": list(chosen)}
    values["tta_comparison_val_auc"] = {t: scores[(option, t, "single")][0]
                                        for t in _tta_options(args.tta, kind,
                                                              len(model_options[option]) > 1)}
    values["crop_comparison_val_auc"] = {
        f"model={m}, tta={t}, contexts={','.join(map(str, crop_options[c]))}": v[0]
        for (m, t, c), v in scores.items()
    }
    section = load_card(card_path).get("classifier", {})
    previous = section.get("calibration")
    if previous is not None and previous.get("engine") != "onnxruntime":
        values["calibration_training"] = previous
    run_calibration = members[0][0].parent / "calibration.json"
    if len(members) == 1 and run_calibration.is_file():
        # the training run's own fit (torch, ground-truth crops) of the network shipped now
        values["calibration_training"] = {**json.loads(run_calibration.read_text()),
                                          "masks": "ground truth (no jitter)", "engine": "torch"}
    # A new graph or operating point is a new release: the evidence about the old one (test
    # results, member selection) is stale by construction and stays on file as such.
    update_card(card_path, "classifier", values)
    log.info("operating point (%s masks, tta %s): %s", args.masks, tta,
             json.dumps({k: v for k, v in values.items() if k != "calibration_training"}))
    return 0


def _tta_options(choice: str, kind: str, ensemble: bool = False) -> tuple[str, ...]:
    """The mirror options to score: the one asked for, or with ``auto`` every one that applies
    (mirroring the crop alone only means something for a single two-view network)."""
    from busdx.models.contract import input_views

    if choice == "flip_crop" and ensemble:
        return ()
    if choice != "auto":
        return (choice,)
    if input_views(kind) == 2 and not ensemble:
        return ("none", "flip", "flip_crop")
    return ("none", "flip")


def _option_cost(key: tuple[str, str, str], passes: dict[str, int], crop_options: dict) -> float:
    from busdx.models.contract import TTA_COST

    model, tta, crops = key
    return passes[model] * len(crop_options[crops]) * TTA_COST[tta]


def _cheapest_within(
    scores: dict, passes: dict[str, int], crop_options: dict, tolerance: float,
    max_passes: int | None = None,
) -> tuple[str, str, str]:
    """The (model, tta, crops) option with the fewest network passes per image among those whose
    validation AUC is within ``tolerance`` of the best; ties in cost go to the higher AUC.
    ``passes``: each model option's passes per crop; options over ``max_passes`` do not take
    part (not even as the best)."""

    def cost(key: tuple[str, str, str]) -> float:
        return _option_cost(key, passes, crop_options)

    if max_passes is not None:
        scores = {k: v for k, v in scores.items() if cost(k) <= max_passes}
        if not scores:
            raise BusdxError(f"no option needs {max_passes} network passes or fewer")
    if not scores:
        raise BusdxError("no option to compare: flip_crop applies to a single two-view network")
    best = max(v[0] for v in scores.values())
    near = [k for k, v in scores.items() if v[0] >= best - tolerance]
    return min(near, key=lambda k: (cost(k), -scores[k][0]))


def _parse_contexts(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise BusdxError(f"--contexts must be comma-separated numbers, not {text!r}") from err
    if not values or any(not 0.0 <= v <= 2.0 for v in values):
        raise BusdxError(f"--contexts must be numbers in [0, 2], not {text!r}")
    return values


def _plot_history(history: list[dict], path: Path) -> None:
    from busdx.evaluation.classification_plots import plot_history

    try:
        plot_history(history, path)
    except Exception as err:  # a figure must never sink a finished training run
        log.warning("learning curves not drawn: %s", err)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.candidate:
        return run_select_members(args)
    import onnxruntime

    from busdx.data.index import load_index
    from busdx.data.splits import SplitConfig, make_split
    from busdx.evaluation import classification as ec
    from busdx.evaluation.model_card import load_card, update_card
    from busdx.hardware import describe

    start = time.monotonic()
    index = load_index(args.data)
    test = make_split(index, SplitConfig(test_fold=args.test_fold)).test
    models = Path(args.models)
    card = load_card(models).get("classifier", {})
    if args.fit_lesion_reading:
        card["lesion_reading"] = _fit_lesion_reading(args, index, models, card)
    preds, empty = ec.predict_records(test, models, args.masks, args.threads)
    report = ec.evaluate_predictions(
        preds, card["temperature"], card["threshold"], logit_offset=card.get("logit_offset", 0.0),
        masks="predicted" if args.masks == "predicted" else "ground truth",
        empty_masks=empty, reps=args.reps,
    )
    result = report.to_dict()
    # one hospital, four scanners whose malignant shares differ: how even is the model?
    result["per_scanner"] = ec.by_group(preds, [r.scanner for r in test], card["threshold"])
    # beside the reading it is a second read of: the radiologists' BI-RADS at the examination
    result.update(ec.birads_sections(preds, card["threshold"], reps=args.reps))
    result.update({"test_fold": args.test_fold, "engine": "onnxruntime",
                   "wall_minutes": round((time.monotonic() - start) / 60, 2),
                   "hardware": describe(args.threads, onnxruntime=onnxruntime.__version__)})
    if args.figures:
        from busdx.evaluation.classification_plots import save_figures

        result["figures"] = [str(p) for p in save_figures(preds, report, Path(args.figures))]
    print_table(result)
    values = _card_results(card, result)
    lesion = card.get("lesion_reading") or {}
    if args.fit_lesion_reading:
        values["lesion_reading"] = lesion
    if lesion.get("offered") and args.masks == "predicted":
        # BUS-BRA's Case is one lesion: its -l and -r images are two planes of it
        lesion_test = ec.evaluate_lesion_reading(
            preds, [r.patient for r in test], card["temperature"], lesion["threshold"],
            masks="predicted", empty_masks=empty, reps=args.reps,
            logit_offset=card.get("logit_offset", 0.0))
        for unit, r in ((u, lesion_test[u]) for u in ("image", "lesion")):
            sys.stdout.write(f"\nlesion reading, per {unit} (threshold {r['threshold']:.4f})\n")
            print_table(r, unit="images" if unit == "image" else "lesions")
        values["lesion_reading"] = {**lesion, "test": {**lesion_test, "test_fold": args.test_fold}}
    if not args.no_evidence:
        update_card(models, "classifier", values)
    return 0


def _fit_lesion_reading(args: argparse.Namespace, index, models: Path, card: dict) -> dict:
    """Rule X: the lesion threshold from the validation images' served logits (predicted
    masks), for the card's ``classifier.lesion_reading`` (replacing it, test section and all)."""
    from busdx.data.splits import SplitConfig, make_split, validation_name
    from busdx.evaluation import classification as ec

    if card.get("site_calibration"):
        raise BusdxError(f"{models} was recalibrated on a site's images: fit the lesion reading "
                         "on the bundled models")
    split = make_split(index, SplitConfig(test_fold=args.test_fold, seed=args.split_seed,
                                          val_fold=args.val_fold))
    preds, empty = ec.predict_records(split.val, models, "predicted", args.threads)
    fit = ec.fit_lesion_reading(preds, [r.patient for r in split.val], card["temperature"],
                                card.get("calibration", {}).get("target_sensitivity", 0.90))
    fit["validation"].update(split=validation_name(args.split_seed, args.val_fold),
                             empty_masks=empty, masks="predicted")
    fit["command"] = args.invocation
    v = fit["validation"]
    log.info("lesion reading on validation: %d images, %d lesions; AUC %.4f (per-image reading "
             "%.4f); threshold %.4f: sensitivity %.3f, specificity %.3f; offered: %s", v["n"],
             v["lesions"], v["auc_lesion_reading"], v["auc_image_reading"], fit["threshold"],
             v["sensitivity"], v["specificity"], fit["offered"])
    return fit


def run_select_members(args: argparse.Namespace) -> int:
    """Apply the member rule to candidates already scored on validation, and record it in the
    card. The chosen ensemble must be the one the card ships: shipping is the candidate's own
    ``--calibrate-only`` command, run on the models folder."""
    from busdx.cli import name_value_pairs
    from busdx.evaluation.members import ScoredEnsemble, member_selection
    from busdx.evaluation.model_card import load_card, record_round

    if not args.baseline or not args.rule:
        raise BusdxError("--candidate needs --baseline NAME and --rule TEXT")
    folders = name_value_pairs(args.candidate, "--candidate")
    scored = {name: ScoredEnsemble.from_folder(folder) for name, folder in folders.items()}
    record = member_selection(scored, args.baseline, args.min_gain, args.rule, args.run, args.note)
    record["command"] = args.invocation
    width = max(map(len, scored)) + 2
    for name, s in sorted(scored.items(), key=lambda kv: -kv[1].val_auc):
        flag = "  <- chosen" if name == record["chosen"] else ""
        print(f"{name:<{width}}{s.passes} passes  validation AUC {s.val_auc:.4f}{flag}")
    card_path = Path(args.models)
    shipped = (load_card(card_path).get("classifier") or {}).get("checkpoints") or []
    chosen = scored[record["chosen"]]
    if sorted(shipped) != sorted(chosen.checkpoints):
        raise BusdxError(f"{card_path} ships {shipped}, not the chosen {record['chosen']!r}: ship "
                         f"it first with its own command, on {args.models}: {chosen.command}")
    record_round(card_path, "classifier", "member_selection", record)
    log.info("wrote classifier.member_selection to %s", card_path)
    return 0


def _card_results(card: dict, result: dict) -> dict:
    """``test`` holds the headline (end-to-end) numbers. A ground-truth-mask evaluation goes to
    ``test_gt_masks``, and also to ``test`` while no end-to-end evaluation exists, flagged by
    ``masks: "ground truth"``."""
    if result["masks"] == "predicted":
        return {"test": result, "masks": "predicted"}
    values = {"test_gt_masks": result}
    if card.get("test", {}).get("masks") != "predicted":
        values.update({"test": result, "masks": "ground truth"})
    return values


def _ci_text(ci) -> str:
    return f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def print_table(r: dict, bootstrap: str = "patient", unit: str = "images") -> None:
    lo, hi = r["auc_ci95"]
    rows = [
        (unit, r["n"]), ("masks", r["masks"]),
        ("ROC AUC", f"{r['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}, {bootstrap} bootstrap)"),
        ("accuracy", f"{r['accuracy']:.3f}"), ("precision", f"{r['precision']:.3f}"),
        ("sensitivity", f"{r['sensitivity']:.3f}{_ci_text(r.get('sensitivity_ci95'))}"),
        ("specificity", f"{r['specificity']:.3f}{_ci_text(r.get('specificity_ci95'))}"),
        ("TP FP TN FN", f"{r['tp']} {r['fp']} {r['tn']} {r['fn']}"),
        ("threshold", f"{r['threshold']:.4f} (calibrated probability)"),
        ("ECE", f"{r['ece_uncalibrated']:.3f} -> {r['ece_calibrated']:.3f}"),
    ]
    if r.get("birads"):
        rows.append(("band vs BI-RADS", f"Spearman {r['birads']['spearman']:.3f}, weighted "
                                        f"kappa {r['birads']['weighted_kappa_linear_3level']:.3f}"))
    if r.get("readers"):
        from busdx.evaluation.card_markdown import signed_interval

        d = r["readers"]
        rows.append(("BI-RADS as score", f"AUC {d['birads_auc']:.3f}{_ci_text(d['birads_auc_ci95'])}"
                                         f"; model minus BI-RADS {d['difference']:+.3f} (95% CI "
                                         f"{signed_interval(d['difference_ci95'])})"))
    for name, g in (r.get("per_birads") or {}).items():
        rates = ", ".join(f"{k} {g[k]:.3f}" for k in ("sensitivity", "specificity")
                          if g[k] is not None)
        rows.append((name, f"{g['n']} images, {g['malignant']} malignant: {rates}"))
    for name, value in rows:
        sys.stdout.write(f"{name:16s} {value}\n")


def run_export(args: argparse.Namespace) -> int:
    if args.recover:
        return _recover(args)
    from busdx.cli import writable_release
    from busdx.models.classification import export_onnx
    from busdx.training.classification import load_checkpoint

    writable_release(str(Path(args.out).parent), str(Path(STAGING)))
    model, ckpt = load_checkpoint(args.checkpoint)
    path = export_onnx(model, args.out, size=int(ckpt["config"]["size"]), tta=args.tta,
                       storage=args.storage)
    log.info("wrote %s (test-time augmentation: %s)", path, args.tta)
    if not args.no_evidence:
        from busdx.evaluation.model_card import update_card

        # a new graph invalidates the operating point: recalibrate (--calibrate-only) after this
        update_card(path.parent, "classifier",
                    {"tta": args.tta, "logit_offset": 0.0, "checkpoint_epoch": ckpt.get("epoch"),
                     "weights_storage": args.storage,
                     "input": ckpt["config"].get("input", "crop")})
        log.warning("the card's operating point belongs to the previous graph: run "
                    "`busdx train classification --calibrate-only` next")
    return 0


def _recover_members(graph: Path, section: dict, out: Path) -> int:
    import torch

    from busdx.models.from_onnx import recover_classifier_members

    members = section.get("members") or []
    checkpoints = recover_classifier_members(graph, members,
                                             float(section.get("logit_offset", 0.0)),
                                             section.get("tta", "none"))
    for record, checkpoint in zip(members, checkpoints, strict=True):
        path = out.parent / f"{record['arch']}_{record['config'].get('input', 'crop')}" / out.name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path)
        if record.get("training"):
            (path.parent / "training.json").write_text(json.dumps(record["training"], indent=2)
                                                       + "\n")
        log.info("rebuilt member %s from %s (the ensemble within %.1e)", path, graph,
                 checkpoint["recovered_from"]["ensemble_max_abs_diff"])
        print(path)
    return 0


def _made_of(folder: Path) -> dict:
    """The networks and mirror option a release's graph was exported with, read back from its
    ``made_of`` line (a shipped release keeps them there, not among its evidence)."""
    from busdx.evaluation.model_card import classifier_made_of_parts
    from busdx.release import RELEASE_FILE, load_release

    if not (folder / RELEASE_FILE).is_file():
        return {}
    return classifier_made_of_parts(load_release(folder / RELEASE_FILE).classifier.made_of)


def _recover(args: argparse.Namespace) -> int:
    """Write the checkpoint rebuilt from the graph, with the training record and the training
    run's calibration that the card keeps beside it (``--calibrate-only`` reads both)."""
    import torch

    from busdx.evaluation.model_card import load_card
    from busdx.models.from_onnx import recover_classifier

    graph = Path(args.out)
    if not graph.is_file():
        raise BusdxError(f"no classifier graph at {graph}")
    section = load_card(graph.parent).get("classifier", {})
    if section.get("file") != graph.name:
        raise BusdxError(f"the card beside {graph} does not describe it")
    section = {**_made_of(graph.parent), **section}
    if section.get("ensemble") or len(section.get("members") or []) > 1:
        return _recover_members(graph, section, Path(args.recover))
    _, checkpoint = recover_classifier(graph, section)
    out = Path(args.recover)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    if section.get("training"):
        (out.parent / "training.json").write_text(json.dumps(section["training"], indent=2) + "\n")
    if section.get("calibration_training"):
        fit = {k: v for k, v in section["calibration_training"].items()
               if k not in ("masks", "engine")}
        (out.parent / "calibration.json").write_text(json.dumps(fit, indent=2) + "\n")
    log.info("rebuilt %s from %s (largest output difference %.1e)", out, graph,
             checkpoint["recovered_from"]["max_abs_diff"])
    return 0
