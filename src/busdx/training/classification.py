"""Training the benign/malignant classifier on lesion crops (or whole images).

Per-image data (decoded gray image and ground-truth mask, uint8) are cached once; crops are cut
on the fly with jitter (so the classifier does not depend on a pixel-perfect mask: at inference
the mask comes from the segmenter) and augmented with busdx.data.augment. The loop itself
(schedule, checkpoints, resume, early stopping, time budget) is :mod:`busdx.training.loop`; this
module supplies its pieces. The best checkpoint is chosen by validation ROC AUC; fold 5 is never
looked at here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from busdx.data.augment import AugmentConfig, Augmenter
from busdx.data.crop import CropConfig, lesion_crop
from busdx.data.index import Record
from busdx.data.preprocess import load_gray, load_mask
from busdx.errors import BusdxError
from busdx.models.classification import ClassifierSpec, build_classifier, normalise
from busdx.models.contract import input_views
from busdx.numeric import roc_auc
from busdx.training import common, distributed, loop
from busdx.training.common import seed_everything
from busdx.training.config import CONFIG_FILE, JsonConfig
from busdx.training.distill import Teacher, soft_target_loss

log = logging.getLogger(__name__)

INPUTS = ("crop", "image", "both")
IMBALANCE = ("weighted", "oversample", "none")

# Training-only targets beside the biopsy label (bus_data.csv): the histology, in the groups
# large enough to learn from, and the radiologist's BI-RADS category. They give the features
# finer distinctions than benign/malignant (a cyst is not a fibroadenoma) at no cost at
# inference: their head is dropped after training.
HISTOLOGY_GROUPS = ("fibroadenoma", "cyst", "fibrocystic changes", "other benign",
                    "invasive ductal carcinoma", "invasive lobular carcinoma", "other malignant")
BIRADS_CATEGORIES = (2, 3, 4, 5)


@dataclass
class ClassifierTrainConfig(JsonConfig):
    arch: str = "lite0"
    weights: str = "imagenet"
    # "crop": the lesion with context; "image": the whole letterboxed image; "both": the two as
    # two views of one shared backbone, features concatenated before the head
    input: str = "crop"
    size: int = 224
    context: float = 0.3
    jitter: float = 0.15
    imbalance: str = "weighted"
    epochs: int = 20
    max_minutes: float | None = 35.0  # a hard stop: the schedule does not depend on it
    batch_size: int = 24
    lr: float = 1e-3  # head
    backbone_lr: float = 2e-4
    weight_decay: float = 1e-4
    dropout: float = 0.3
    patience: int = 6
    # 0 (off) or the per-step decay of an exponential moving average of the weights: the
    # average is what gets validated and saved (it smooths the last epochs' noise)
    ema: float = 0.0
    threads: int = 1
    seed: int = 0
    # the command line's split, recorded with the run (train_classifier is given the samples)
    data: str | None = None
    test_fold: int = 5
    split_seed: int = 0  # the train/validation split of the other folds
    val_fold: int | None = None  # a whole official fold as validation (cross-validation)
    max_batches: int | None = None  # per epoch; for smoke tests
    device: str = "auto"  # CUDA when there is one
    workers: int = 0  # processes that prepare batches ahead of the model (same batches for any)
    augment: str = "default"  # an AugmentConfig preset, recorded with the run
    # weight of each auxiliary loss (histology group, BI-RADS category; see HISTOLOGY_GROUPS);
    # 0: the biopsy label alone
    aux_weight: float = 0.0
    # an exported classifier graph (a bundled ensemble, say) whose logit the network also learns
    # to match on every augmented batch (busdx.training.distill), weighted teacher_weight against
    # the labels' loss; None: the labels alone
    teacher: str | None = None
    teacher_weight: float = 0.5
    # a classifier.pt to start from instead of ImageNet's weights (a run's, or one rebuilt from a
    # bundled graph by `busdx export classification --recover`); None: ``weights``
    init: str | None = None
    resume: bool = False  # go on from the run folder's last.pt (same recipe), if there is one

    RUN_SETTINGS: ClassVar[tuple[str, ...]] = (
        "data", "max_minutes", "threads", "workers", "device", "resume")

    def __post_init__(self) -> None:
        AugmentConfig.preset(self.augment)  # an unknown name fails here, not an hour in
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema is a per-step decay in [0, 1), not {self.ema}")
        if self.aux_weight < 0:
            raise ValueError(f"--aux-weight must be >= 0, not {self.aux_weight}")
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise ValueError(f"--teacher-weight must lie in [0, 1], not {self.teacher_weight}")

    @classmethod
    def from_record(cls, config: dict) -> ClassifierTrainConfig:
        """The config a checkpoint or training.json recorded (keys of older or newer versions
        left out). Records older than presets kept the settings themselves, all the defaults."""
        return cls(**{k: v for k, v in config.items() if k in cls.__dataclass_fields__
                      and (k != "augment" or isinstance(v, str))})

    @property
    def crop(self) -> CropConfig:
        return CropConfig(size=self.size, context=self.context)

    @property
    def views(self) -> int:
        return input_views(self.input)


def recorded_config(config: dict) -> dict:
    """A checkpoint's config as run records show it: older checkpoints kept every augmentation
    setting (all the defaults then) instead of a preset's name, left out here."""
    return {k: v for k, v in config.items() if k != "augment" or isinstance(v, str)}


@dataclass
class Sample:
    """One cached image: uint8 gray image and uint8 {0,1} mask, both full size."""

    id: str
    patient: str
    label: int
    image: np.ndarray
    mask: np.ndarray

    def gray(self) -> np.ndarray:
        return self.image.astype(np.float32) / 255.0


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best_val_auc: float  # NaN if validation never had both classes
    history: list[dict]  # as history.json: one row per epoch (history_rows)
    wall_minutes: float
    device: str = "cpu"  # where it trained: "cpu" or "cuda"
    stopped: str = "epochs"  # "epochs", "early_stopping" or "time_budget"
    epochs_run: int = 0
    steps: int = 0  # optimizer steps done, of total_steps planned
    total_steps: int = 0
    rank: int = 0  # under torchrun, the process that returned it (rank 0 wrote the run)


# ---------------------------------------------------------------------------- data


def histology_group(histology: str, label: int) -> int:
    """Index in HISTOLOGY_GROUPS; a histology outside the named groups falls in its class's
    "other" group."""
    name = histology.strip().lower()
    if name in HISTOLOGY_GROUPS:
        group = HISTOLOGY_GROUPS.index(name)
        # bus_data.csv's pathology decides: a named group of the other class counts as other
        if (group >= HISTOLOGY_GROUPS.index("invasive ductal carcinoma")) == bool(label):
            return group
    return HISTOLOGY_GROUPS.index("other malignant" if label else "other benign")


def auxiliary_targets(records: Sequence[Record]) -> np.ndarray:
    """[N, 2] int64: each record's histology group and BI-RADS category index."""
    rows = []
    for r in records:
        if r.birads not in BIRADS_CATEGORIES:
            raise ValueError(f"{r.id}: BI-RADS {r.birads} is not one of {BIRADS_CATEGORIES}")
        rows.append((histology_group(r.histology, r.label), BIRADS_CATEGORIES.index(r.birads)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def cache_path(cache_dir: Path, records: Sequence[Record]) -> Path:
    key = hashlib.sha1("|".join(str(r.image_path) for r in records).encode()).hexdigest()[:12]
    return cache_dir / f"gray_u8_{key}.pkl"


def load_samples(records: Sequence[Record], cache_dir: str | Path | None = None) -> list[Sample]:
    """Decode every record once (uint8 image + mask); cached under ``cache_dir`` if given."""
    path = cache_path(Path(cache_dir), records) if cache_dir else None
    if path is not None and path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    samples = []
    for r in records:
        gray = load_gray(r.image_path)
        image = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
        samples.append(Sample(r.id, r.patient, r.label, image, load_mask(r.mask_path)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(samples, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return samples


def make_input(
    sample: Sample,
    mode: str,
    crop: CropConfig,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The classifier's [views, size, size] input for ``sample`` (``mask`` overrides the GT
    mask): the crop, the whole image, or both stacked."""
    image = sample.gray()
    views = []
    if mode in ("crop", "both"):
        views.append(lesion_crop(image, sample.mask if mask is None else mask, crop, rng=rng,
                                 jitter=jitter)[0])
    if mode in ("image", "both"):
        views.append(lesion_crop(image, None, crop)[0])
    return np.stack(views)


class CropDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        samples: Sequence[Sample],
        config: ClassifierTrainConfig,
        train: bool,
        seed: int = 0,
        aux: np.ndarray | None = None,
    ):
        self.samples = list(samples)
        if aux is not None and len(aux) != len(self.samples):
            raise ValueError(f"{len(aux)} auxiliary targets for {len(self.samples)} samples")
        self.aux = aux
        self.config = config
        self.train = train
        self.augmenter = Augmenter(AugmentConfig.preset(config.augment)) if train else None
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        c = self.config
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x = make_input(s, c.input, c.crop, rng, c.jitter)
            x = np.stack([self.augmenter(v, None, rng)[0] for v in x])
        else:
            x = make_input(s, c.input, c.crop)
        item = torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(float(s.label))
        return item if self.aux is None else (*item, torch.from_numpy(self.aux[i]))


# ---------------------------------------------------------------------------- training


def class_weight(labels: Sequence[int]) -> float:
    """pos_weight for BCE that balances the classes (benign count / malignant count)."""
    labels = np.asarray(labels)
    return float((labels == 0).sum() / max((labels == 1).sum(), 1))


def make_sampler(labels: Sequence[int], generator: torch.Generator
                 ) -> torch.utils.data.WeightedRandomSampler:
    """Oversample the minority class so that an epoch sees both classes equally often."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=2).astype(float)
    weights = 1.0 / counts[labels]
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), len(labels), replacement=True,
        generator=generator,
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order: a function of (seed, epoch) alone, so a resumed run
    draws the orders the uninterrupted run would have."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch])
                                             .generate_state(1)[0]))


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        if device is not None:
            x = x.to(device)
        logits.append(model(normalise(model, x)).squeeze(1).cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels).astype(int)


def train_classifier(
    train: Sequence[Sample],
    val: Sequence[Sample],
    config: ClassifierTrainConfig,
    out_dir: str | Path,
    aux: np.ndarray | None = None,
    starts: tuple[Teacher | None, dict | None] | None = None,
) -> TrainResult:
    """Fine-tune end to end; the checkpoint with the best validation AUC is kept
    (``classifier.pt``). ``aux`` (``auxiliary_targets`` of the training records) is needed when
    ``config.aux_weight`` > 0; the auxiliary head is not part of the checkpoint. ``starts``:
    what :func:`read_starts` gave for ``config``, when the caller has read it already."""
    if config.aux_weight > 0 and aux is None:
        raise ValueError("aux_weight > 0 needs the auxiliary targets of the training samples")
    out_dir = Path(out_dir)
    process, device = distributed.start(config.device)
    per_process = distributed.per_process_batch(config.batch_size, process)
    teacher, start = starts if starts is not None else read_starts(config)
    spec = _spec(config)
    state = loop.read_last(out_dir, config.recipe()) if config.resume else None
    if process.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # the recipe, not how this invocation began: training again from it starts afresh
        replace(config, resume=False).save(out_dir / CONFIG_FILE)
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    model = build_classifier(spec, pretrained=start is None)
    if start is not None:
        initialise(model, start, CropDataset(train, config, train=False))
    model = model.to(device)

    aux_head = None
    if config.aux_weight > 0:
        # seeded after the model, so the model's initialisation matches a run without it
        aux_head = nn.Linear(config.views * model.num_features,
                             len(HISTOLOGY_GROUPS) + len(BIRADS_CATEGORIES)).to(device)
    averaged = WeightAverage(model, config.ema) if config.ema else None
    scored = model if averaged is None else averaged.model  # what is validated and saved

    train_ds = CropDataset(train, config, train=True, seed=config.seed,
                           aux=aux if aux_head is not None else None)
    labels = [s.label for s in train]
    # Each sample's augmentation is seeded by (seed, epoch, index) and the order is drawn in this
    # process, so worker processes change the speed, not the batches.
    loading = dict(num_workers=config.workers, pin_memory=device.type == "cuda")

    def loader(epoch: int) -> torch.utils.data.DataLoader:
        train_ds.epoch = epoch
        gen = epoch_generator(config.seed, epoch)
        sampler = (make_sampler(labels, gen) if config.imbalance == "oversample"
                   else torch.utils.data.RandomSampler(train_ds, generator=gen))
        # the epoch's order is drawn whole, then (under torchrun) this process takes its share
        # of every batch: any number of processes makes the same optimizer steps
        order = list(sampler)
        if process.distributed or len(order) > config.batch_size:
            order = order[: len(order) // config.batch_size * config.batch_size]
            order = [order[i] for i in distributed.shard(order, config.batch_size, process)]
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(train_ds, order), batch_size=per_process, shuffle=False,
            drop_last=len(order) > per_process, **loading,
        )

    val_loader = torch.utils.data.DataLoader(
        CropDataset(val, config, train=False), batch_size=2 * config.batch_size, **loading
    )
    pos_weight = class_weight(labels) if config.imbalance == "weighted" else 1.0
    label_loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))

    def loss(batch) -> torch.Tensor:
        x, y = (t.to(device, non_blocking=True) for t in batch[:2])
        loss_fn = label_loss
        if teacher is not None:
            taught = teacher(x)  # on the same augmented inputs the network sees

            def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return ((1.0 - config.teacher_weight) * label_loss(logits, y)
                        + config.teacher_weight * soft_target_loss(logits, taught))
        if aux_head is None:
            return loss_fn(model(normalise(model, x)).squeeze(1), y)
        return _loss_with_aux(model, aux_head, normalise(model, x), y,
                              batch[2].to(device, non_blocking=True), loss_fn, config.aux_weight)

    def validate() -> dict[str, float]:
        logits, val_labels = predict_logits(scored, val_loader, device)
        auc = roc_auc(val_labels, logits) if len(set(val_labels)) == 2 else float("nan")
        val_loss = float(nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits), torch.from_numpy(val_labels.astype(np.float32))))
        return {"val_loss": val_loss, "val_auc": auc}

    def schedule(optimizer: torch.optim.Optimizer, total_steps: int):
        # warm-up over the first tenth, then cosine decay; beta1 cycles against the lr
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[config.backbone_lr, config.lr], total_steps=max(total_steps, 1),
            pct_start=0.1)

    def write_history(rows: list[dict]) -> None:
        (out_dir / "history.json").write_text(json.dumps(history_rows(rows), indent=2))

    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.backbone_parameters()), "lr": config.backbone_lr},
            {"params": [*model.head_parameters(),
                        *(aux_head.parameters() if aux_head is not None else ())],
             "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = len(loader(0))
    if config.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_batches)
    others = {"aux_head": aux_head, "weight_average": averaged.model if averaged else None}
    task = loop.Task(
        model=model, optimizer=optimizer, scheduler=schedule, steps_per_epoch=steps_per_epoch,
        batches=loader, loss=loss, validate=validate, metric="val_auc",
        best_checkpoint=lambda epoch, metrics: checkpoint_contents(
            scored, spec, config, epoch, metrics["val_auc"]),
        after_step=(lambda: averaged.update(model)) if averaged is not None else None,
        others={name: m for name, m in others.items() if m is not None},
        on_epoch=write_history,
    )
    run = loop.run(task, loop.LoopConfig(epochs=config.epochs, patience=config.patience,
                                         max_minutes=config.max_minutes,
                                         best_file="classifier.pt"),
                   out_dir, recipe=config.recipe(), resume=state, process=process,
                   device=device)
    history = history_rows(run.history)
    distributed.stop(process)
    if process.main:
        write_history(run.history)
    return TrainResult(out_dir / "classifier.pt", run.best_epoch, run.best_metric, history,
                       run.seconds / 60, device.type, stopped=run.stopped,
                       epochs_run=len(history), steps=run.step, total_steps=run.total_steps,
                       rank=process.rank)


def history_rows(rows: list[dict]) -> list[dict]:
    """The loop's per-epoch rows as history.json and training.json hold them (the report and
    the card read these keys)."""
    return [{"epoch": r["epoch"], "train_loss": r["train_loss"], "val_loss": r["val_loss"],
             "val_auc": r["val_auc"], "minutes": round(r["seconds"] / 60, 2)} for r in rows]


def _loss_with_aux(model: nn.Module, aux_head: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   aux: torch.Tensor, loss_fn, weight: float) -> torch.Tensor:
    """The biopsy loss plus ``weight`` times each auxiliary cross-entropy, all from one pass:
    the auxiliary head reads the same (dropped-out) pooled features as the classifier's."""
    pooled = model.pooled(x)
    loss = loss_fn(model.head(pooled).squeeze(1), y)
    extra = aux_head(model.dropout(pooled))
    n = len(HISTOLOGY_GROUPS)
    ce = nn.functional.cross_entropy
    return loss + weight * (ce(extra[:, :n], aux[:, 0]) + ce(extra[:, n:], aux[:, 1]))


class WeightAverage:
    """An exponential moving average of a model's weights (batch-norm statistics included)."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for avg, new in zip(self.model.state_dict().values(), model.state_dict().values(),
                            strict=True):
            if avg.is_floating_point():
                avg.lerp_(new, 1.0 - self.decay)
            else:  # counters such as num_batches_tracked
                avg.copy_(new)


def checkpoint_contents(model, spec, config, epoch: int | None, val_auc: float) -> dict:
    """What ``classifier.pt`` holds (read by :func:`load_checkpoint`, export and soups)."""
    return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "spec": asdict(spec), "config": asdict(config), "epoch": epoch, "val_auc": val_auc}


def save_checkpoint(model, spec, config, path: Path, epoch: int | None, val_auc: float) -> None:
    common.save_checkpoint(Path(path), checkpoint_contents(model, spec, config, epoch, val_auc))


def read_starts(config: ClassifierTrainConfig) -> tuple[Teacher | None, dict | None]:
    """The run's teacher and starting checkpoint, each checked against the network it is for:
    a teacher that cannot read the batches, or a checkpoint of another network, is refused here,
    before anything is written (the CLI calls this before it reads the data or makes the run
    folder)."""
    teacher = None
    if config.teacher:
        teacher = Teacher(config.teacher, "logit", threads=config.threads)
        teacher.check_input(config.views, config.size)
    return teacher, read_init(config.init, _spec(config)) if config.init else None


def _spec(config: ClassifierTrainConfig) -> ClassifierSpec:
    return ClassifierSpec(arch=config.arch, dropout=config.dropout, weights=config.weights,
                          views=config.views)


def read_init(init: str | Path, spec: ClassifierSpec) -> dict:
    """The checkpoint ``init`` (a classifier.pt) names, refused unless it holds the network
    ``spec`` describes (arch and views)."""
    path = Path(init)
    if not path.is_file():
        raise BusdxError(f"--init {init}: no such checkpoint")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    theirs = ckpt.get("spec", {})
    if (theirs.get("arch"), theirs.get("views", 1)) != (spec.arch, spec.views):
        raise BusdxError(f"--init {init} holds a {theirs.get('arch')} network of "
                         f"{theirs.get('views', 1)} view(s); give the matching --arch and "
                         f"--input (this run: {spec.arch}, {spec.views} view(s))")
    return ckpt


def initialise(model: nn.Module, checkpoint: dict, inputs: torch.utils.data.Dataset
               ) -> nn.Module:
    """Load ``checkpoint`` (:func:`read_init`) into ``model``. A checkpoint rebuilt from an
    exported graph has its batch norms folded into the convolutions; they get statistics again,
    measured on up to 256 of ``inputs`` (the training samples, unaugmented), so that training
    mode normalises by something meaningful."""
    model.load_state_dict(checkpoint["state_dict"])
    if checkpoint.get("recovered_from"):
        from busdx.models.from_onnx import restore_batch_norm_statistics

        count = min(len(inputs), 256)
        batches = (normalise(model, torch.stack([inputs[i][0]
                                                 for i in range(j, min(j + 16, count))]))
                   for j in range(0, count, 16))
        restore_batch_norm_statistics(model, batches)
    return model.train()


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model (eval mode) and the checkpoint's metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_classifier(ClassifierSpec(**ckpt["spec"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


# ---------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(
    model: nn.Module,
    samples: Sequence[Sample],
    config: ClassifierTrainConfig,
    augment_seed: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Pooled backbone features [N, C] of each sample's input (augmented when a seed is given)."""
    model.eval()
    ds = CropDataset(samples, config, train=augment_seed is not None, seed=augment_seed or 0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    out = [model.pooled(normalise(model, x)).numpy() for x, _ in loader]
    return np.concatenate(out)


# ---------------------------------------------------------------------------- comparisons


@dataclass
class HeadScore:
    """A cheap head fitted on frozen features, scored on validation."""

    name: str
    val_auc: float
    val_balanced_accuracy: float  # at probability 0.5 of the fitted head
    val_sensitivity: float
    val_specificity: float


def fit_head(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
    imbalance: str, seed: int = 0, c: float = 0.05,
) -> HeadScore:
    """Standardise, rebalance (``none``, ``weighted``, ``oversample``, ``smote``), fit a
    logistic-regression head and score it on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    x, y = scaler.transform(train_x), train_y
    weight = None
    if imbalance == "weighted":
        weight = "balanced"
    elif imbalance == "oversample":
        from imblearn.over_sampling import RandomOverSampler

        x, y = RandomOverSampler(random_state=seed).fit_resample(x, y)
    elif imbalance == "smote":
        from imblearn.over_sampling import SMOTE

        k = int(min(5, np.bincount(y).min() - 1))  # tiny sets (tests) have few minority cases
        x, y = SMOTE(random_state=seed, k_neighbors=max(k, 1)).fit_resample(x, y)
    head = LogisticRegression(C=c, class_weight=weight, max_iter=3000).fit(x, y)
    prob = head.predict_proba(scaler.transform(val_x))[:, 1]
    pred = prob >= 0.5
    sens = float(pred[val_y == 1].mean())
    spec = float((~pred[val_y == 0]).mean())
    return HeadScore(imbalance, roc_auc(val_y, prob), (sens + spec) / 2, sens, spec)


def feature_comparisons(
    train: Sequence[Sample], val: Sequence[Sample], config: ClassifierTrainConfig
) -> dict:
    """Crop vs whole image vs both, and the imbalance strategies, on frozen ImageNet features of
    the backbone with a logistic-regression head: validation numbers only."""
    torch.set_num_threads(config.threads)
    model = build_classifier(ClassifierSpec(arch=config.arch, weights=config.weights))
    ty = np.array([s.label for s in train])
    vy = np.array([s.label for s in val])
    feats = {}
    for mode in ("crop", "image"):
        cfg = ClassifierTrainConfig(**{**asdict(config), "input": mode})
        feats[mode] = (extract_features(model, train, cfg), extract_features(model, val, cfg))
        log.info("features for %s: %s", mode, feats[mode][0].shape)
    feats["both"] = tuple(np.concatenate([feats["crop"][i], feats["image"][i]], 1) for i in (0, 1))
    inputs = {m: asdict(fit_head(f[0], ty, f[1], vy, "weighted", config.seed))
              for m, f in feats.items()}
    imbalance = {
        k: asdict(fit_head(feats["crop"][0], ty, feats["crop"][1], vy, k, config.seed))
        for k in ("none", "weighted", "oversample", "smote")
    }
    return {
        "protocol": f"frozen ImageNet {config.arch} features (GAP), logistic regression "
                    "(C=0.05, standardised), fitted on train, scored on validation",
        "input": inputs,
        "imbalance_on_crop_features": imbalance,
        "n_train": len(train), "n_val": len(val),
    }


# ---------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    temperature: float
    threshold: float  # on the calibrated probability
    target_sensitivity: float
    val_auc: float
    val_ece_before: float
    val_ece_after: float
    val_nll_before: float
    val_nll_after: float
    val_sensitivity: float
    val_specificity: float
    n_val: int


def validation_logits(model: nn.Module, val: Sequence[Sample], config: ClassifierTrainConfig,
                      batch_size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the validation crops as training scores them (ground-truth masks,
    no jitter)."""
    loader = torch.utils.data.DataLoader(CropDataset(val, config, train=False),
                                         batch_size=batch_size)
    return predict_logits(model, loader)


def validation_auc(model: nn.Module, val: Sequence[Sample], config: ClassifierTrainConfig
                   ) -> float:
    logits, labels = validation_logits(model, val, config)
    return roc_auc(labels, logits)


def calibrate_on_validation(
    model: nn.Module, val: Sequence[Sample], config: ClassifierTrainConfig,
    target_sensitivity: float = 0.90,
) -> tuple[Calibration, np.ndarray, np.ndarray]:
    """Temperature and operating threshold from the validation crops; returns the calibration,
    the validation logits and labels."""
    from busdx.training.calibration import (
        calibrate,
        expected_calibration_error,
        fit_temperature,
        nll,
        sensitivity_threshold,
        sigmoid,
    )

    logits, labels = validation_logits(model, val, config)
    t = fit_temperature(logits, labels)
    probs = calibrate(logits, t)
    threshold = sensitivity_threshold(probs, labels, target_sensitivity)
    called = probs >= threshold
    cal = Calibration(
        temperature=t, threshold=threshold, target_sensitivity=target_sensitivity,
        val_auc=roc_auc(labels, logits),
        val_ece_before=expected_calibration_error(sigmoid(logits), labels),
        val_ece_after=expected_calibration_error(probs, labels),
        val_nll_before=nll(logits, labels), val_nll_after=nll(logits, labels, t),
        val_sensitivity=float(called[labels == 1].mean()),
        val_specificity=float((~called[labels == 0]).mean()),
        n_val=len(labels),
    )
    return cal, logits, labels
