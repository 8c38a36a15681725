"""`python -m ddpm_lib train`: the run its flags (cli_train_flags.py) build, resume checks, DDP (torchrun).

Parts before the whole: model / schedule / objective / data from the flags, the flags a resumed run refuses, then
`train` (what the parser runs), inside a DDP process group under torchrun.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from .recipes import RECIPES
from .runtime import precision_dtype
from .objective import Objective
from .schedule import PAPER_SCHEDULE, NoiseSchedule
from .train_config import TrainConfig
from .train_log import check_logger
from .cli_args import FieldError, show
from .cli_train_flags import KEPT, NETWORK, OBJECTIVE, TRAINING
from .folders import folder_shape
from .record import RunConfig, RunRecord, read_config, record_differences
from .unet import PRESETS, UNetConfig


# -- what the flags build ---------------------------------------------------------------------------------------
def _schedule(args, config: RunConfig | None = None) -> NoiseSchedule:
    """The noise schedule of --schedule, --num-timesteps, --beta-min and --beta-max (--config's when it fills them)."""
    if args.schedule == "custom":  # --config's own betas (no flag names a custom schedule)
        assert config is not None and config.schedule is not None
        return config.schedule
    T = args.num_timesteps or PAPER_SCHEDULE.num_timesteps
    if args.schedule in ("cosine", "flow"):
        if args.beta_min is not None or args.beta_max is not None:
            raise ValueError(f"--beta-min/--beta-max set the linear schedule; --schedule {args.schedule} has none")
        return NoiseSchedule.cosine(T) if args.schedule == "cosine" else NoiseSchedule.flow(T)
    beta_min = args.beta_min if args.beta_min is not None else PAPER_SCHEDULE.beta_min
    beta_max = args.beta_max if args.beta_max is not None else PAPER_SCHEDULE.beta_max
    if beta_min >= beta_max:
        raise ValueError(f"--beta-min {beta_min} must be < --beta-max {beta_max}")
    return NoiseSchedule.linear(T, beta_min, beta_max)


def _network(args, base: UNetConfig | None = None, own_size: str = ""):
    """The UNetConfig of --preset (else `base`, --config's network) with the knobs given; a bad combination names
    its flags. `own_size`: the folder whose own size --image-size holds (not given), for a size the network refuses."""
    given = {name: getattr(args, name) for name in NETWORK if getattr(args, name) is not None}
    start, origin = (PRESETS[args.preset], f"--preset {args.preset}") if args.preset else (base, "--config's network")
    if start is None:
        raise ValueError("--preset: a new run needs a network (--preset, --recipe, or a --config that has one)")
    try:
        return replace(start, **given)
    except FieldError as e:  # the fields of a bad value (or combination) name their flags, the given ones first
        if own_size and "image_size" in e.fields:  # the folder's size, not a flag's: resizing is the user's choice
            raise ValueError(f"--data {own_size}: its images are {args.image_size}x{args.image_size}, and {e} (with "
                             f"{origin}); pass --image-size N to resize them (bicubic) to a size it takes") from None
        flags = [NETWORK[name].name for name in e.fields if name in given] or [NETWORK[name].name for name in given]
        raise ValueError(f"{'/'.join(flags)}: {e} (with {origin})") from None


def _layer_config(args, config: RunConfig, explicit: set) -> dict:
    """Put --config's values into `args` where no flag set them (`explicit`: the flags given); they win over
    --recipe's. Returns its TrainConfig fields that no flag sets (grad_clip, flip, ...)."""
    extra = {}
    for name, value in config.training.items():
        if name in ("out_dir", "progress") or name in explicit:  # --out and --no-progress are this run's
            continue
        if hasattr(args, name):
            setattr(args, name, value)
        else:
            extra[name] = value
    if config.network is not None:
        if "preset" not in explicit:
            args.preset = None  # the network is the config's (a recipe's preset does not replace it)
        for name in NETWORK:
            if name in config.network and name not in explicit and args.preset is None:
                setattr(args, name, config.network[name])
        args.class_cond = args.class_cond or config.network.get("num_classes") is not None
    if config.objective is not None:
        for name in OBJECTIVE:
            if name in config.objective and name not in explicit:
                setattr(args, name, config.objective[name])
    if config.data is not None and "data" not in explicit:
        args.data = None  # the config's images, by their record (not a recipe's data by name)
    schedule = config.schedule
    if schedule is not None and not explicit & {"schedule", "num_timesteps", "beta_min", "beta_max"}:
        args.schedule, args.num_timesteps = schedule.kind, schedule.num_timesteps
        args.beta_min, args.beta_max = schedule.params.get("beta_min"), schedule.params.get("beta_max")
    return extra


def _flagged(field: str, e: Exception) -> ValueError:
    """`e` as one line, starting with the flag that sets TrainConfig's `field` (where one does)."""
    return ValueError(f"{TRAINING[field].name}: {e}" if field in TRAINING else str(e))


def _train_config(**values) -> TrainConfig:
    """TrainConfig(**values) (it checks every field); a bad value's error names the flag of its field."""
    try:
        return TrainConfig(**values)
    except FieldError as e:
        raise _flagged(e.field, e) from None


def _objective(args) -> Objective:
    """The Objective of --prediction, --loss-weighting and --snr-gamma (Objective's defaults where left out)."""
    given = {name: getattr(args, name) for name in OBJECTIVE if getattr(args, name) is not None}
    try:
        return Objective(**given)
    except FieldError as e:  # the field it came from names its flag
        raise ValueError(f"{OBJECTIVE[e.field].name}: {e}") from None


def _asked(args, record: RunRecord) -> tuple[dict, set]:
    """The resumed run's record (config.json's form) with every field a flag given sets replaced by its value
    (--preset: each field of the preset but the labels, under the knobs given): what this command asks for; and the
    fields the flags given set by name. Flags left out ask for nothing."""
    asked = record.to_config()
    if args.preset is not None:
        asked["network"].update({k: v for k, v in asdict(PRESETS[args.preset]).items() if k != "num_classes"})
    values = {key: getattr(args, name) for key, (name, _) in KEPT.items()}
    values["data.name"] = args.data and (  # as DataInfo records it: cifar10, shapes, or a folder's absolute path
        args.data if args.data in ("cifar10", "shapes") else str(Path(args.data).expanduser().resolve()))
    named = {key for key, value in values.items()  # a run that recorded no data takes --data as its data
             if value is not None and asked[key.split(".")[0]] is not None}
    for key in named:
        section, name = key.split(".")
        asked[section][name] = values[key]
    return asked, named


def _resume_conflicts(args, record: RunRecord) -> list:
    """The flags given that disagree with the record of the run being resumed: the differences between the record
    and what the flags ask for (`_asked`), each named by the flag that sets its field (else by --preset)."""
    stored = record.to_config()
    asked, named = _asked(args, record)
    conflicts, preset_fields = [], []
    for key, (theirs, ours) in record_differences(stored, asked).items():
        if key in named:
            kind = stored["schedule"]["kind"]
            conflicts.append(f"{KEPT[key][1]} {show(ours)} (the run's: "
                             f"{show(theirs) if theirs is not None else f'none ({kind} schedule)'})")
        else:
            preset_fields.append(key.split(".")[1])
    if preset_fields:
        conflicts.append(f"--preset {args.preset} (the run's network differs in {', '.join(preset_fields)})")
    if args.class_cond and record.network.num_classes is None:
        conflicts.append("--class-cond (the run's network is unconditional)")
    return conflicts


# -- train ------------------------------------------------------------------------------------------------------
def _fit(args, device: torch.device) -> None:
    """A new run from --preset, --data and the knobs, or --resume of OUT/checkpoint.pt; trained to --train-steps."""
    from .checkpoint import CHECKPOINT_NAME, read_checkpoint
    from .runtime import rank_zero_first
    from .stream import GB, FolderSet, memory_budget_bytes, training_data
    from .train import Trainer
    from .unet import UNet

    checkpoint = Path(args.out) / CHECKPOINT_NAME
    resuming = args.resume and checkpoint.exists()
    if args.config is not None and resuming:
        raise ValueError(f"--config: {checkpoint} holds the run's configuration; leave --config out with --resume")
    config_file = read_config(args.config) if args.config is not None else None  # checked before any work
    explicit = {name for name, value in vars(args).items() if value not in (None, False)}
    if args.recipe is None and config_file is not None:  # the recipe the config records fills what it leaves out
        args.recipe = config_file.training.get("recipe")
    if args.recipe is not None and not resuming:  # the recipe's fields where no flag set them
        recipe = RECIPES[args.recipe]
        betas_given = args.beta_min is not None or args.beta_max is not None  # they ask for the linear schedule
        for name in (f.name for f in fields(recipe) if f.name in vars(args)):  # named as the fields flags set
            if getattr(args, name) is None and not (name == "schedule" and betas_given):
                setattr(args, name, getattr(recipe, name))
        for name in OBJECTIVE:
            if getattr(args, name) is None:
                setattr(args, name, getattr(recipe.objective, name))
        args.class_cond = args.class_cond or recipe.class_cond
    extra = _layer_config(args, config_file, explicit) if config_file is not None else {}
    if args.train_steps is None and args.recipe is not None:  # resuming a recipe's run: its train_steps
        args.train_steps = RECIPES[args.recipe].train_steps
    if args.train_steps is None:
        raise ValueError("--train-steps: expected the optimizer steps of the run in all (or --recipe, which sets them)")
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
    overrides = {"out_dir": args.out, "progress": not args.no_progress, "compile": args.compile,  # this run's
                 **{name: getattr(args, name) for name, flag in TRAINING.items()
                    if flag.resume and getattr(args, name) is not None}}
    recorded, ckpt = None, None  # the resumed run's DataInfo and checkpoint (read once)
    if resuming:
        ckpt = read_checkpoint(checkpoint)
        record = RunRecord.from_checkpoint(ckpt, checkpoint)
        recorded = record.data
        conflicts = _resume_conflicts(args, record)
        if conflicts:
            raise ValueError(f"--resume: {'; '.join(conflicts)}: leave these flags out to continue {checkpoint}, "
                             f"or choose another --out")
        if recorded is None and args.data is None:
            raise ValueError(f"--data: {checkpoint} does not record its training data; pass --data")
        train_config = _train_config(**{**asdict(record.training), **overrides})  # checked before any data is read
        config, class_cond = record.network, record.network.num_classes is not None
    else:
        network = config_file.network if config_file is not None else None
        if config_file is not None and args.data is None:
            recorded = config_file.data  # --config's images, reloaded by their record
        if (args.preset is None and network is None) or (args.data is None and recorded is None):
            raise ValueError("--preset and --data are needed to start a new run (or a --config that has them)")
        base = UNetConfig(**network) if network is not None else None
        own_size, channels = "", 0  # a folder's path when its images' own size sets the network's; their channels
        if args.data is not None and args.data not in ("cifar10", "shapes") and Path(args.data).is_dir():
            asked = args.image_size if args.image_size is not None else base.image_size if base is not None else None
            args.image_size, channels = folder_shape(args.data, asked)  # headers only: its size and channels
            own_size = args.data if asked is None else ""
        config, schedule, class_cond = _network(args, base, own_size), _schedule(args, config_file), args.class_cond
        if channels and "ch_list" not in explicit:  # the image channels are the data's (ch_list[0]): 1 for grayscale
            config = replace(config, ch_list=(channels, *config.ch_list[1:]))
        objective = _objective(args)
        given = {name: getattr(args, name) for name in (*TRAINING, "recipe") if getattr(args, name) is not None}
        train_config = _train_config(**{**extra, **given, **overrides})
    seed, size = train_config.seed, config.image_size
    if "cond_drop_prob" in explicit and not class_cond:
        raise ValueError("--cond-drop-prob: the network is unconditional (train with --class-cond)")
    try:  # the precision on this device (bf16 needs Ampere or later), before any data is read
        precision_dtype(train_config.precision, device)
    except ValueError as e:
        raise _flagged("precision", e) from None
    try:
        check_logger(train_config.logger)
    except ImportError as e:
        raise _flagged("logger", e) from None

    extractor = None  # FID's Inception network, loaded before any data (offline without its weights: one line)
    if train_config.eval_every:
        from .metrics import inception_extractor

        try:
            with rank_zero_first():  # one download
                extractor = inception_extractor()
        except FileNotFoundError as e:
            raise _flagged("eval_every", e) from None

    budget = memory_budget_bytes(train_config.memory_budget, device)  # a folder of more streams from its files
    with rank_zero_first():  # a resumed run's own images by its record, else the ones --data names
        loaded = training_data(recorded if recorded is not None else args.data, budget, root=args.data_root,
                               n=args.n_images, seed=seed, size=size)
    if loaded.info.channels != config.ch_list[0]:
        raise ValueError(f"--ch-list: the network takes {config.ch_list[0]}-channel images (its first entry), "
                         f"{loaded.info.name}'s have {loaded.info.channels}")
    if isinstance(loaded, FolderSet):
        if train_config.eval_every:  # the Evaluator takes the images in memory
            raise ValueError(f"--eval-every: {loaded.info.name}'s {loaded.images.nbytes / GB:.3g} GB of images "
                             f"stream (over --memory-budget); evaluating needs them in memory: raise --memory-budget")
    if class_cond and (loaded.labels is None or loaded.info.class_names is None):
        raise ValueError(f"--class-cond: {loaded.info.name} has no classes (an image folder needs its images in "
                         f"class sub-folders, none directly in it)")
    if ckpt is not None:
        trainer = Trainer.from_checkpoint(ckpt, checkpoint, device=device, **overrides)  # overrides checked above
        if trainer.rank == 0:
            print(f"resuming {checkpoint} at step {trainer.step} of {args.train_steps}", file=sys.stderr)
    else:
        torch.manual_seed(seed)  # weight init (DDP broadcasts rank 0's anyway)
        classes = loaded.info.class_names
        model = UNet(replace(config, num_classes=len(classes)) if class_cond and classes else config)
        trainer = Trainer(model, schedule, train_config, objective, device=device)
    trainer.data_info = loaded.info  # resumed: the record itself
    if isinstance(loaded, FolderSet) and trainer.rank == 0:
        print(f"streaming {loaded.info.name}: {loaded.images.nbytes / GB:.3g} GB decoded, over the memory budget of "
              f"{budget / GB:.3g} GB; {train_config.workers} DataLoader workers decode its batches", file=sys.stderr)
    if train_config.eval_every:
        from .evaluation import training_evaluator

        evaluator = trainer.evaluator = training_evaluator(loaded, args.data_root, size, seed, extractor)
        if trainer.rank == 0:
            print(f"evaluating every {train_config.eval_every} steps: FID/KID with {evaluator.extractor_name} "
                  f"features against {len(loaded.images):,} training images; loss on {len(evaluator.held_out)} "
                  f"images of the {evaluator.held_out_name}", file=sys.stderr)
    trainer.fit(loaded.images, loaded.labels if class_cond else None)
    if trainer.rank == 0:
        print(f"step {trainer.step}: wrote {checkpoint}", file=sys.stderr)


def train(args) -> None:
    """The `train` command: _fit inside a DDP process group when torchrun started us."""
    import torch.distributed as dist

    from .runtime import init_distributed

    device = init_distributed(args.device)
    try:
        _fit(args, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
