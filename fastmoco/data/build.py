"""Which source and which loader a config names: ``build_data(cfg, device, rank, world)``."""
from fastmoco.errors import DataError

from . import dali
from .classes import keep_classes, keep_fmnist_classes, select_classes
from .fmnist import is_fmnist_dir, load_fmnist
from .folder import image_folder
from .folder_source import FolderData
from .labelled import align_classes, labelled_set
from .memory import TensorData
from .shard_source import ShardData
from .shards import is_shards, resolve

# Who makes the two views when --loader is left unset: DALI for ImageFolders (when installed); for in-memory
# Fashion-MNIST the batched tensor augmentation, the faster of the two on the 2-core CPU (benchmarks/RESULTS.md
# section 6: 15,114 vs 9,348 images/s; a training epoch of 12,800 images 21.1 vs 22.4 s).
LOADERS = ("dali", "torch")
MEMORY_DEFAULT_LOADER = "torch"


def choose_loader(requested, in_memory: bool) -> tuple[str, str | None]:
    """(loader, notice): the requested one, or the default for the data; a one-line notice when DALI is missing."""
    if requested == "dali" and not dali.available():
        raise DataError(f"--loader dali needs NVIDIA DALI, which is not installed ({dali.INSTALL_HINT})")
    if requested:
        return requested, None
    if in_memory:
        return MEMORY_DEFAULT_LOADER, None
    if dali.available():
        return "dali", None
    return "torch", f"NVIDIA DALI is not installed ({dali.INSTALL_HINT}): images go through the torchvision DataLoader"


def build_data(cfg, device, rank: int = 0, world: int = 1):
    """The training source for ``cfg``, sharded for process ``rank`` of ``world``; ``.loader`` says who makes
    the views and ``.notice`` is a line for the log (or None)."""
    in_memory = is_fmnist_dir(cfg.data)
    loader, notice = choose_loader(cfg.loader, in_memory)
    data, val_note = _build(cfg, device, rank, world, loader, in_memory)
    data.notice = "; ".join(n for n in (notice, val_note) if n) or None
    return data


def _build(cfg, device, rank, world, loader, in_memory):
    """(the source, a note on what --val evaluates when it lacks some training classes, or None)."""
    if is_shards(cfg.data):
        return _build_shards(cfg, device, rank, world, loader)
    if in_memory:
        if cfg.val:  # its monitor scores Fashion-MNIST's own test set; a folder of RGB images would not fit it
            raise DataError(f"--val {cfg.val}: training on Fashion-MNIST, the kNN monitor uses its own test set; "
                            "--val is for ImageFolder training data (fastmoco-lincls --val scores a folder against "
                            "Fashion-MNIST)")
        images, labels = load_fmnist(cfg.data, train=True)
        test_images, test_labels = load_fmnist(cfg.data, train=False)
        if cfg.classes:  # the kNN monitor then scores the same classes of the test set
            (images, labels), (test_images, test_labels) = keep_fmnist_classes(
                cfg.classes, (images, labels), (test_images, test_labels))
        if cfg.subset:
            images, labels = images[:cfg.subset], labels[:cfg.subset]
        return TensorData(cfg, device, images, labels, test_images, test_labels, rank, world, loader), None
    train_ds = image_folder(cfg.data)
    if cfg.classes:
        ids = select_classes(cfg.classes, train_ds.classes, f"{cfg.data} (its class folders)")
        train_ds.samples, train_ds.targets = keep_classes(train_ds.samples, train_ds.targets, ids)
        train_ds.imgs = train_ds.samples
    if cfg.subset:
        train_ds.samples = train_ds.imgs = train_ds.samples[:cfg.subset]
        train_ds.targets = train_ds.targets[:cfg.subset]
    val_ds = image_folder(cfg.val) if cfg.val else None
    if val_ds is not None and cfg.classes:  # the monitor scores the chosen classes, matched by folder name
        chosen = [train_ds.classes[i] for i in ids]
        ids_val = [i for i, n in enumerate(val_ds.classes) if n in chosen]
        samples, _ = keep_classes(val_ds.samples, val_ds.targets, ids_val)
        new_index = {old: new for new, old in enumerate(ids_val)}
        val_ds.classes = [val_ds.classes[i] for i in ids_val]  # its other folders are no longer its classes
        val_ds.class_to_idx = {n: i for i, n in enumerate(val_ds.classes)}
        val_ds.samples = val_ds.imgs = [(p, new_index[t]) for p, t in samples]
        val_ds.targets = [t for _, t in val_ds.samples]
    val_note = align_classes(train_ds, val_ds) if val_ds is not None else None  # labels by class name
    return FolderData(cfg, device, train_ds, val_ds, rank, world, loader), val_note


def _build_shards(cfg, device, rank, world, loader):
    if cfg.classes:
        raise DataError("--classes selects classes of Fashion-MNIST or an ImageFolder; shards are read in their "
                        "manifest's order: write a shard set of those classes instead (fastmoco-shards on a folder "
                        "holding only them)")
    shards = resolve(cfg.data)
    if cfg.subset:
        shards = shards.first(cfg.subset)
    val_ds, note = None, None
    if cfg.val and shards.classes:  # the monitor compares labels: the training shards need theirs
        val_ds = labelled_set(cfg.val)
        note = "; ".join(n for n in (getattr(val_ds, "note", None), align_classes(shards, val_ds)) if n) or None
    return ShardData(cfg, device, shards, val_ds, rank, world, loader), note
