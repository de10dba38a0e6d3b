"""The training loop: time-budgeted, checkpointed, resumable; export with a runtime check.

Schedule (fractions of the time budget, so a CPU session and a GPU run follow the same
plan): until ``QUANT_AT`` the student learns knots and float tables (activations are
already rounded, straight through); then its knots are rounded and frozen, each layer's
shift is fixed and its tables are int8 fake-quantised for the rest of the budget, with
the learning rate decaying to zero (cosine). At the end the last layer's biases are refit
to zero the mean error on training patches (``calibrate``). Resuming with a larger budget (or
``max_iters``) stretches what is left of the schedule: a run already in its int8 stage
stays there, and its cosine runs from where it stands to zero at the new end.

The budget counts the seconds spent in training steps (not data preparation, validation
or checkpoints). A step that took far longer than usual (the process was suspended, the
laptop slept) is counted at the usual step time. The teacher (a float CNN) trains alongside
on the same batches; the student's loss is ``MSE(student, HR) + lam * MSE(student,
teacher)`` (images in 0..1 units). The ECNN baseline follows the same schedule without
teacher (``lam = 0``) and without learnable knots.

With ``ensemble`` n > 1 the student is the net's n-pass self-ensemble (``net.EnsembleNet``):
the loss, validation, bias refit and export check all see the averaged output, and the
exported model carries ``ensemble = n``, so it runs as it was trained. ``int8_only`` (with
``init``) skips the float stage: the trained model's knots stay, and its int8 tables are
fine-tuned for the whole budget (a float stage would re-learn knots and then re-round the
tables, which loses part of what the model had).

The parts, in the order ``train`` runs them (``Trainer``): setting up or resuming a run,
the training step and the loop around it (validation, checkpoints, Ctrl-C), the end of
training (int8 stage, bias refit) and the export with its check of the integer runtime.
The options and their checks are ``config.Config``'s.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import SCALES, default_model_path, load_model, save_model
from ..planes import from_planes, to_planes
from . import data, folders
from .calibrate import calibrate_bias
from .config import CPU_BATCH, CPU_PATCH, GPU_BATCH, GPU_PATCH, Config, add_arguments
from .loader import Batches, default_workers
from .net import EnsembleNet, LUTNet, TeacherCNN, ecnn_arch, iqlut_arch
from .torch_forward import bf16_supported
from .validate import Validation, runtime_upscaler

QUANT_AT = 0.7
SHOW_EVERY = 1.0  # seconds between progress-bar updates (each reads the loss off the device)


def resolve_device(setting: str = "auto") -> torch.device:
    """``--device``: auto is cuda when torch sees a CUDA device, else the CPU; cuda without
    one is an error (one line)."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "cuda":
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else "no CUDA device or driver found")
        raise ValueError(f"--device cuda: torch {torch.__version__} sees no CUDA device ({why})")
    return torch.device("cpu")


def exact_float32() -> None:
    """float32 convolutions and matrix products in full float32 on CUDA (no TF32, which
    torch allows for convolutions by default): the quantised forward must compute what
    the integer runtime does, and TF32 keeps 10 mantissa bits."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):  # torch >= 2.9
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def resolve_init(name: str) -> str:
    """``--init``: a model file, or ``x2`` / ``x3`` / ``x4`` for the shipped default of that
    scale (a file of that name, if there is one, comes first)."""
    if not Path(name).exists() and name.lower() in {f"x{s}" for s in SCALES}:
        return str(default_model_path(int(name[1:])))
    return name


def arch_of(model) -> list:
    """The layer specs of a trained model (``--init`` without shape options trains its shape)."""
    last = len(model.layers) - 1
    return [dict(c_in=layer.c_in, c_out=None if n == last else layer.c_out, k=layer.k, L=layer.L,
                 residual=bool(layer.residual)) for n, layer in enumerate(model.layers)]


def use_bf16(setting: str, device: torch.device) -> bool:
    """``auto``: bfloat16 where it is fast (``torch_forward.bf16_supported``)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {setting!r}")
    return bf16_supported(device) if setting == "auto" else setting == "on"


def machine(device: torch.device | None = None) -> str:
    device = device if device is not None else resolve_device("auto")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"CPU {platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()} "
            f"(torch {torch.__version__}, shared machine)")


def torch_upscaler(net: torch.nn.Module, device):
    """lr uint8 image -> the torch forward's uint8 image (the planes the runtime would run)."""
    def run(lr: np.ndarray) -> np.ndarray:
        planes, layout = to_planes(lr)
        p = torch.from_numpy(planes.astype(np.float32))[:, None].to(device)
        with torch.no_grad():
            out = net(p)[:, 0].round().clamp(0, 255).cpu().numpy().astype(np.uint8)
        return from_planes(out, layout)
    return run


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic write. The state holds only tensors, numbers, strings, lists and dicts, so
    it loads back with ``torch.load(weights_only=True)``: no pickled objects are run."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path, cfg: Config) -> dict:
    """The checkpoint at ``path``, which must be of ``cfg``'s scale and kind."""
    # on the CPU: torch.set_rng_state takes only a CPU tensor; load_state_dict copies the
    # weights (and Adam's moments) onto the net's device
    st = torch.load(path, map_location="cpu", weights_only=True)
    if st["config"]["scale"] != cfg.scale or st["config"]["kind"] != cfg.kind:
        raise ValueError(f"checkpoint {path} is for another scale/kind")
    return st


def resolve_arch(cfg: Config, st: dict | None, ckpt_path: Path, like=None) -> list:
    """The layer specs to train: ``cfg.arch``, else the default shape with ``cfg``'s
    hidden/last_k/hidden_k/width, or with none of these and a model to start from
    (``like``: ``--init``), that model's shape. A resumed run keeps its checkpoint's layers
    (it may have started under another default); other layers asked for explicitly are an
    error."""
    explicit = bool(cfg.arch or cfg.hidden is not None or cfg.last_k is not None
                    or cfg.hidden_k is not None or cfg.width is not None)
    if like is not None and not explicit:
        arch = arch_of(like)
    else:
        arch = cfg.arch or [dict(a) for a in
                            (iqlut_arch if cfg.kind == "iqlut" else ecnn_arch)(
                                cfg.scale, cfg.hidden, cfg.last_k, cfg.hidden_k, cfg.width)]
    if st is None or list(st["config"]["arch"]) == list(arch):
        return arch
    if explicit:
        old = st["config"]["arch"]
        raise ValueError(f"checkpoint {ckpt_path} has {len(old)} layers (windows "
                         f"{[a['k'] for a in old]}, width {old[0]['c_out']}), not the "
                         f"{len(arch)} (windows {[a['k'] for a in arch]}, width "
                         f"{arch[0]['c_out']}) asked for")
    return st["config"]["arch"]


# ----------------------------------------------------------------------------- schedule


def _lr_factor(frac: float, quant_frac: float | None = None) -> float:
    """Cosine decay within each stage; the quantised stage restarts at 0.3 of the peak.

    ``quant_frac`` is where the int8 stage began (None: not yet); it is ``QUANT_AT``
    unless a resumed run was given a larger budget than the one it started with."""
    if quant_frac is None:
        return 0.5 * (1 + math.cos(math.pi * min(frac / QUANT_AT, 1.0))) * 0.9 + 0.1
    g = (frac - quant_frac) / max(1.0 - quant_frac, 1e-9)
    return 0.3 * 0.5 * (1 + math.cos(math.pi * min(max(g, 0.0), 1.0)))


SUSPENDED_FACTOR = 20.0  # a step this many times slower than usual counts as suspended


def counted_step_time(dt: float, usual: float | None) -> float:
    """The seconds a step counts against the budget: its time, unless it took more than
    ``SUSPENDED_FACTOR`` times the usual step (and over 10 s), then the usual time."""
    if usual is not None and dt > 10.0 and dt > SUSPENDED_FACTOR * usual:
        return usual
    return dt


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _catch_sigterm():
    """SIGTERM (a job scheduler, ``kill``) stops training like Ctrl-C does: checkpoint
    saved, ``--resume`` continues. Returns the previous handler (None: not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- training


class Trainer:
    """One training run. ``train`` calls its parts in order:

    - ``Trainer(cfg, resume, log)``: set up a new run, or resume the checkpoint: layers,
      student (the net, or its n-pass ensemble) and teacher, optimisers, random state,
      training and validation data;
    - ``fit(progress)``: ``step`` until the budget is spent, with validation every
      ``val_every`` and a checkpoint every ``ckpt_every`` seconds, and a checkpoint on
      Ctrl-C or SIGTERM;
    - ``finish()``: the int8 stage if the run ended before it, the bias refit, the last
      validation and checkpoint;
    - ``export()``: the model file, with the integer runtime checked against the torch
      forward on the validation split.
    """

    def __init__(self, cfg: Config, resume: bool = False, log=print, warn=None,
                 progress: bool = False):
        self.cfg, self.log = cfg, log
        self.warn = warn or (lambda m: print(m, file=sys.stderr))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            exact_float32()
            torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest
        self.out = cfg.resolved_out()
        self.ckpt_path = self.out.with_name(self.out.name + ".ckpt")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        st = read_checkpoint(self.ckpt_path, cfg) if resume and self.ckpt_path.exists() else None
        self._resolve_sizes(st)
        init_model = None  # the model --init loaded (int8_only keeps its shifts)
        if st is not None:  # where the run started is the run's, whatever this command says
            cfg.init = st["config"].get("init", "")
            cfg.init_note = st["config"].get("init_note", {})
        elif cfg.init:
            init_model = self._read_init(cfg.init)
        arch = resolve_arch(cfg, st, self.ckpt_path, like=init_model)
        cfg.arch = [dict(a) for a in arch]

        torch.manual_seed(cfg.seed)
        self.bf16 = use_bf16(cfg.bf16, self.device)
        self.net = LUTNet(cfg.scale, arch, kind=cfg.kind, bf16_grad=self.bf16).to(self.device)
        if init_model is not None:
            self._start_from(init_model)
        # what is trained, validated, refit and exported: the net, or its n-pass ensemble
        self.student = EnsembleNet(self.net, cfg.ensemble)
        self.teacher = None
        if cfg.kind == "iqlut" and cfg.lam > 0:
            self.teacher = TeacherCNN(cfg.scale, cfg.teacher_width).to(self.device)
        self._optimisers()

        self.elapsed, self.it, self.history = 0.0, 0, []
        self.quantised = False
        self.quant_point = None  # (elapsed seconds, iteration) when the int8 stage began
        self.loss_ema = self.base_ema = self.step_ema = None
        self.calibration = None
        if st is not None:
            self._restore(st)
        elif cfg.int8_only:  # Config checked that init is given
            # the model's knots (frozen) and int8 tables (exact at the chosen shift) from
            # step 0: the whole budget is the int8 stage, its cosine from 0.3 of the peak
            self.enter_int8(like=init_model)
        log(f"training {cfg.kind} x{cfg.scale} on {machine(self.device)}; budget "
            f"{cfg.time_budget:.0f} s; batch {cfg.batch} of {cfg.patch} px"
            f"{f'; {self.workers} loader processes' if self.workers else ''}"
            f"{'; bfloat16 gradients' if self.bf16 else ''}")
        self._batches = None  # the loader (made when steps begin: loader.Batches)
        self._load_data(progress)

    # ---- setup and resume

    def _resolve_sizes(self, st: dict | None) -> None:
        """``--batch`` / ``--patch`` not given: a resumed run's own, else what suits the
        device; ``--workers`` not given: ``loader.default_workers``. A resumed run given no
        ``--data`` keeps its checkpoint's data (and ``--val``, ``--with-installed``)."""
        cfg = self.cfg
        gpu = self.device.type == "cuda"
        old = st["config"] if st else {}
        if not cfg.data and old.get("data"):
            cfg.data, cfg.with_installed = tuple(old["data"]), old.get("with_installed", False)
            cfg.installed_share = old.get("installed_share", cfg.installed_share)
            cfg.val = cfg.val or old.get("val", "")
        if cfg.batch is None:
            cfg.batch = old["batch"] if st else (GPU_BATCH if gpu else CPU_BATCH)
        if cfg.patch is None:
            cfg.patch = old["patch"] if st else (GPU_PATCH if gpu else CPU_PATCH)
        self.workers = cfg.workers if cfg.workers is not None else default_workers(self.device)

    def _read_init(self, name: str):
        """The ``--init`` model (a file, or x2 / x3 / x4: ``resolve_init``), of this scale."""
        path = resolve_init(name)
        model = load_model(path)
        if model.scale != self.cfg.scale:
            raise ValueError(f"--init {name}: the model is x{model.scale}, this run is "
                             f"--scale {self.cfg.scale}")
        self.init_path = path
        return model

    def _start_from(self, init_model) -> None:
        """Load the ``--init`` model into the net (``LUTNet.load_model``); note it in the
        config (checkpoints keep it, the export's provenance says it)."""
        cfg, arch, path = self.cfg, self.cfg.arch, self.init_path
        added = self.net.load_model(init_model)
        cfg.init_note = {"file": Path(path).name, "layers_added": added,
                         **{k: init_model.provenance[k] for k in ("iterations", "train_seconds", "seed")
                            if k in init_model.provenance}}
        widened = ""
        if init_model.layers[0].c_out != arch[0]["c_out"]:
            cfg.init_note["width_from"] = init_model.layers[0].c_out
            widened = f", widened from {init_model.layers[0].c_out} to {arch[0]['c_out']} channels"
        self.log(f"student starts from {path} ({len(init_model.layers)} layers, {added} identity "
                 f"layers added{widened}); distillation only on batches where the teacher is better")

    def _optimisers(self) -> None:
        """Adam for the student's tables and biases, and (a higher rate) its knots; Adam for
        the teacher."""
        cfg, named = self.cfg, list(self.net.named_parameters())
        self.knot_params = [p for n, p in named if n.endswith("knot_logits")]
        self.table_params = [p for n, p in named if not n.endswith("knot_logits")]
        groups = [{"params": self.table_params, "lr": cfg.lr, "base": cfg.lr}]
        if self.knot_params:
            groups.append({"params": self.knot_params, "lr": cfg.knot_lr, "base": cfg.knot_lr})
        self.opt = torch.optim.Adam(groups)
        self.topt = (torch.optim.Adam(self.teacher.parameters(), lr=cfg.lr)
                     if self.teacher is not None else None)

    def _restore(self, st: dict) -> None:
        """Nets, optimisers, counters and random state from the checkpoint ``st``."""
        cfg = self.cfg
        self.net.load_state_dict(st["net"])
        self.quantised = st["quantised"]
        if self.quantised:  # the frozen knots no longer train (no Adam state for them)
            for p in self.knot_params:
                p.requires_grad_(False)
            self.opt = self._int8_opt()
        self.opt.load_state_dict(st["opt"])
        if self.teacher is not None and st.get("teacher"):
            self.teacher.load_state_dict(st["teacher"])
            self.topt.load_state_dict(st["topt"])
        self.elapsed, self.it, self.history = st["elapsed"], st["iteration"], st["history"]
        if self.quantised:
            old = st["config"]
            self.quant_point = tuple(st.get("quant_point") or (QUANT_AT * old["time_budget"],
                                                                int(QUANT_AT * old["max_iters"])))
        torch.set_rng_state(st["torch_rng"])
        self.log(f"resumed from {self.ckpt_path} at iteration {self.it}, {self.elapsed:.0f} s")
        if st["config"].get("ensemble", 1) != cfg.ensemble:
            self.log(f"the checkpoint trained a {st['config'].get('ensemble', 1)}-pass output; "
                     f"from here the {cfg.ensemble}-pass ensemble's")
        old_budget = st["config"]["time_budget"]
        if not cfg.max_iters and cfg.time_budget > old_budget:
            self.log(f"budget extended from {old_budget:.0f} to {cfg.time_budget:.0f} s: "
                     f"the rest of the schedule stretches to the new end")

    def _load_data(self, progress: bool = False) -> None:
        """The training source (``self.source``: the installed photos' crop bank, your
        images (``--data``), or both) and the validation images (held out of ``--data``,
        ``--val``, or the installed split), with their bicubic score. Data errors are
        ``folders.DataError`` (one line); skipped files are reported through ``warn``."""
        cfg = self.cfg
        val_images = None  # None: the installed validation split
        val_files = self._val_files() if cfg.val else None
        if cfg.data:
            self.source, val_images, what = self._folder_data(progress, val_files)
        else:
            self.source = self._installed_bank()
            what = f"{len(self.source)} training crops ({data.CROP}px planes) of the installed photos"
        if val_files is not None:
            val_images = folders.validation_images(val_files, cfg.val_crop, self.warn)
            if not val_images:
                raise folders.DataError(f"--val {cfg.val}: none of its images could be read")
        if self.source.max_patch() < cfg.patch:
            raise ValueError(f"--patch {cfg.patch}: the installed photos' crops take LR patches "
                             f"of at most {self.source.max_patch()} pixels at x{cfg.scale}")
        self.val = Validation(cfg.scale, cfg.val_crop, images=val_images, limit=cfg.limit_val)
        bicubic = self.val.bicubic()
        if val_images is not None:
            bicubic = self._drop_exact_images(val_images, bicubic)
        self.bic = bicubic["psnr"]
        self.data_note = what
        counted = "" if cfg.data and not cfg.val else f"; {len(self.val.names)} validation images"
        self.log(f"data: {what}{counted}{f' ({cfg.val})' if cfg.val else ''}; bicubic validation "
                 f"{self.bic:.3f} dB{f'; cache {folders.cache_root(cfg.cache_dir)}' if cfg.data else ''}")

    def _drop_exact_images(self, images: dict, bicubic: dict) -> dict:
        """Validation images whose crop bicubic reproduces exactly (a flat or linear one:
        an infinite PSNR would make every mean infinite) are not scored, with a note;
        ``bicubic``: ``self.val.bicubic()``. Returns the bicubic scores of what is kept."""
        exact = sorted(k for k, (p, _) in bicubic["per_image"].items() if p == float("inf"))
        if not exact:
            return bicubic
        self.warn(f"note: {len(exact)} validation image{'s' if len(exact) > 1 else ''} not "
                  f"scored: bicubic reproduces {'their' if len(exact) > 1 else 'its'} crop exactly "
                  f"({', '.join(exact[:3])}{', ...' if len(exact) > 3 else ''})")
        kept = {k: v for k, v in images.items() if k not in exact}
        if not kept:
            raise folders.DataError("no validation image to score: bicubic reproduces every one "
                                    "exactly (give --val DIR with other images)")
        self.val = Validation(self.cfg.scale, self.cfg.val_crop, images=kept)
        return self.val.bicubic()

    def _installed_bank(self) -> data.BankSource:
        cfg = self.cfg
        hr, lr = data.build_bank(cfg.scale, limit=cfg.limit_images or None, log=lambda m: None,
                                 names=cfg.images or None)
        return data.BankSource(hr, lr, cfg.scale)

    def _folder_data(self, progress: bool, val_files: list | None):
        """``--data``: the images found, checked, split and prepared (``folders``), none of
        ``val_files`` (``--val``) among them; returns (source, validation images held out
        or None, a line for the log and the provenance)."""
        cfg = self.cfg
        if cfg.with_installed:  # both sources in every batch, or the mix is not what was asked
            n2 = folders.MixedSource.split(cfg.batch, cfg.installed_share)[1]
            if not 0 < n2 < cfg.batch:
                raise folders.DataError(
                    f"--installed-share {cfg.installed_share:g} of --batch {cfg.batch} is "
                    f"{n2} installed patches per batch, {cfg.batch - n2} of --data: both need "
                    "at least one (another share or a larger --batch)")
        files, notes = folders.find_images(cfg.data)
        for note in notes:
            self.warn(note)
        files = folders.usable(files, cfg.patch * cfg.scale, self.warn)
        val_images = None
        if val_files is not None:
            val_real = {os.path.realpath(f.path) for f in val_files}
            kept = [f for f in files if os.path.realpath(f.path) not in val_real]
            if len(kept) < len(files):
                self.warn(f"note: {len(files) - len(kept)} images of --data are in --val too; "
                          "not trained on")
            if not kept:
                raise folders.DataError("--data: every image is in --val; nothing left to train on")
            train_files, held = kept, ""
        else:
            train_files, val_files = folders.holdout(files)
            val_images = folders.validation_images(val_files, cfg.val_crop, self.warn)
            if not val_images:
                raise folders.DataError("--data: no held-out image could be read for validation")
            names = sorted(val_images)
            held = (f", {len(names)} held out for validation ({', '.join(names[:4])}"
                    f"{', ...' if len(names) > 4 else ''})")
        entries = folders.prepare(train_files, cfg.scale, cfg.cache_dir, self.warn, progress)
        source = folders.ImageSource(entries, cfg.scale)
        planes = sum(e.planes for e in entries)
        what = f"{len(entries)} training images ({planes} planes) of {', '.join(cfg.data)}{held}"
        if cfg.with_installed:
            bank = self._installed_bank()
            source = folders.MixedSource(source, bank, cfg.installed_share)
            what += (f"; with the installed photos' {len(bank)} crops, "
                     f"{cfg.installed_share:.0%} of each batch")
        return source, val_images, what

    def _val_files(self) -> list:
        """``--val DIR``: its image files, checked as ``--data``'s are (large enough for the
        protocol's border shave and SSIM window)."""
        from ..datasets import min_side

        cfg = self.cfg
        files, notes = folders.find_images([cfg.val], "--val")
        for note in notes:
            self.warn(note)
        return folders.usable(files, min_side(cfg.scale), self.warn, "--val")

    def state(self) -> dict:
        """What a checkpoint holds (``read_checkpoint``, ``_restore``)."""
        return {"config": asdict(self.cfg), "net": self.net.state_dict(),
                "opt": self.opt.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "topt": self.topt.state_dict() if self.topt is not None else None,
                "quantised": self.quantised,
                "quant_point": list(self.quant_point) if self.quant_point else None,
                "elapsed": self.elapsed, "iteration": self.it, "history": self.history,
                "torch_rng": torch.get_rng_state()}

    def checkpoint(self) -> None:
        save_checkpoint(self.ckpt_path, self.state())

    # ---- the schedule and the step

    def _int8_opt(self):
        """The int8 stage's optimiser: tables and biases (the knots are frozen)."""
        return torch.optim.Adam([{"params": self.table_params, "lr": self.cfg.lr,
                                  "base": self.cfg.lr}])

    def enter_int8(self, like=None) -> None:
        """Round and freeze the knots, int8 tables from here (``like``: keep that loaded
        model's shifts), with the int8 stage's optimiser."""
        self.net.freeze_knots()
        self.net.start_quant(like=like)
        self.quantised, self.quant_point, self.opt = True, (self.elapsed, self.it), self._int8_opt()

    def budget_spent(self) -> bool:
        cfg = self.cfg
        return self.elapsed >= cfg.time_budget or bool(cfg.max_iters and self.it >= cfg.max_iters)

    def schedule_point(self) -> float:
        """How far the run is through its schedule (0..1): by iterations under
        ``max_iters``, else by counted seconds of the budget."""
        cfg = self.cfg
        return self.elapsed / cfg.time_budget if not cfg.max_iters else self.it / cfg.max_iters

    def quant_frac(self) -> float | None:
        """Where the int8 stage began, as a schedule point (None: not yet). Under a budget
        larger than the one it began under (a resume), earlier than ``QUANT_AT``."""
        cfg = self.cfg
        if self.quant_point is None:
            return None
        if cfg.max_iters:
            return min(self.quant_point[1] / cfg.max_iters, QUANT_AT)
        return min(self.quant_point[0] / cfg.time_budget, QUANT_AT)

    def step(self) -> None:
        """One training step: the int8 stage if it is due and the learning rate at this
        point of the schedule; a batch; the teacher's step and the student's (its loss
        ``MSE(student, HR) + lam * MSE(student, teacher)``); the step's time counted."""
        cfg = self.cfg
        t0 = time.monotonic()
        frac = self.schedule_point()
        if not self.quantised and frac >= QUANT_AT:
            self.enter_int8()
            self.log(f"iteration {self.it}: knots frozen, int8 tables (shifts "
                     f"{[int(layer.shift) for layer in self.net.layers]})")
        for g in self.opt.param_groups:
            g["lr"] = g["base"] * _lr_factor(frac, self.quant_frac())
        x, y = next(self.batches)
        pred = self.student(x) / 255.0
        loss = F.mse_loss(pred, y)
        total = loss
        if self.teacher is not None:
            tpred, tloss = self._teacher_step(x, y)
            distill = F.mse_loss(pred, tpred.detach())
            if cfg.init:
                # a student started from a trained model is, at first, far better than the
                # teacher trained alongside from scratch: follow the teacher only where it
                # is the better of the two on this batch (decided on the device: no wait)
                distill = distill * (tloss.detach() < loss.detach()).to(distill.dtype)
            total = loss + cfg.lam * distill
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.it += 1
        self._count(loss, x, y, t0)

    def _teacher_step(self, x, y):
        """The teacher's own step on the batch; returns its prediction and loss."""
        tpred = self.teacher(x) / 255.0
        tloss = F.mse_loss(tpred, y)
        self.topt.zero_grad(set_to_none=True)
        tloss.backward()
        self.topt.step()
        return tpred, tloss

    @property
    def batches(self):
        """The run's batches from this iteration on (``loader.Batches``; made when first
        needed, closed by ``fit``); a benchmark may put another iterator here."""
        if self._batches is None:
            cfg = self.cfg
            self._batches = Batches(self.source, cfg.seed, cfg.batch, cfg.patch, self.device,
                                    start=self.it, workers=self.workers)
        return self._batches

    @batches.setter
    def batches(self, value) -> None:
        self._batches = value

    def close_batches(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def _count(self, loss, x, y, t0: float) -> None:
        """Running means of the loss and of the bicubic base's loss (the progress bar's
        gain; kept on the device, read when shown), and the step's seconds against the
        budget (``counted_step_time``)."""
        with torch.no_grad():
            lv = loss.detach()
            bv = F.mse_loss(self.net.upsample(x) / 255.0, y)
            self.loss_ema = lv if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * lv
            self.base_ema = bv if self.base_ema is None else 0.98 * self.base_ema + 0.02 * bv
        dt = counted_step_time(time.monotonic() - t0, self.step_ema)
        self.step_ema = dt if self.step_ema is None else 0.95 * self.step_ema + 0.05 * dt
        self.elapsed += dt

    def validate(self) -> float:
        """Mean Y-PSNR of the student's torch forward on the validation split (recorded)."""
        self.net.eval()
        v = self.val.score(torch_upscaler(self.student, self.device))["psnr"]
        self.net.train()
        self.history.append({"iteration": self.it, "elapsed_s": round(self.elapsed, 1),
                             "val_psnr": round(v, 4), "quantised": self.quantised})
        return v

    # ---- the loop

    def fit(self, progress: bool = True) -> None:
        """Steps until the budget is spent. Validation every ``val_every`` and a checkpoint
        every ``ckpt_every`` seconds (wall clock); Ctrl-C or SIGTERM saves a checkpoint
        (``--resume`` continues from it) and raises KeyboardInterrupt."""
        cfg = self.cfg
        bar = self._progress_bar() if progress else None
        last_val = self.history[-1]["val_psnr"] if self.history else float("nan")
        previous_term = _catch_sigterm()
        try:
            self.batches  # noqa: B018 - start the loader (its processes) outside the timed steps
            t_ckpt = t_val = t_show = time.monotonic()
            while not self.budget_spent():
                self.step()
                now = time.monotonic()
                if now - t_val >= cfg.val_every:
                    last_val = self.validate()
                    t_val = time.monotonic()
                if now - t_ckpt >= cfg.ckpt_every:
                    self.checkpoint()
                    t_ckpt = time.monotonic()
                if bar is not None and now - t_show >= SHOW_EVERY:
                    self._show(bar, last_val)
                    t_show = now
        except KeyboardInterrupt:  # keep what was learned: --resume continues from here
            self.checkpoint()
            if bar is not None:
                bar.close()
                bar = None
            self.log(f"interrupted at iteration {self.it}; checkpoint {self.ckpt_path} "
                     f"(resume with --resume)")
            raise
        finally:
            _restore_sigterm(previous_term)
            self.close_batches()
            if bar is not None:
                if self.loss_ema is not None:
                    self._show(bar, last_val)
                bar.close()

    def _progress_bar(self):
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.max_iters or int(cfg.time_budget)  # iterations under --max-iters, else seconds
        return tqdm(total=total, initial=min(self._progress_point(), total),
                    unit="it" if cfg.max_iters else "s", desc=f"{cfg.kind} x{cfg.scale}",
                    file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0,
                    dynamic_ncols=True)

    def _progress_point(self) -> int:
        cfg = self.cfg
        return self.it if cfg.max_iters else int(min(self.elapsed, cfg.time_budget))

    def _show(self, bar, last_val: float) -> None:
        bar.n = min(self._progress_point(), bar.total)
        loss, base = float(self.loss_ema), float(self.base_ema)
        bar.set_postfix(it=self.it, loss=f"{loss:.2e}",
                        gain_db=f"{10 * math.log10(base / max(loss, 1e-12)):+.2f}",
                        val=f"{last_val:.2f}", refresh=False)
        bar.update(0)

    # ---- the end of training and the export

    def finish(self) -> None:
        """The int8 stage if the run ended before it (exported, and checkpointed, quantised
        with the optimiser a quantised checkpoint holds; a resume rebuilds it), the last
        layer's bias refit (``calibrate``), the last validation and checkpoint."""
        cfg = self.cfg
        if not self.quantised:
            self.enter_int8()
        if cfg.calib_patches:
            self.calibration = calibrate_bias(self.student, self.source, cfg.patch, self.device,
                                              cfg.seed, cfg.calib_patches)
            self.log(f"bias refit on {cfg.calib_patches} training patches: mean error per phase "
                     f"{self.calibration['mean_error_before']} -> "
                     f"{self.calibration['mean_error_after']} codes")
        self.validate()
        self.checkpoint()

    def provenance(self) -> dict:
        """What the model file records about its training (``export`` adds the check)."""
        cfg = self.cfg
        return {
            "command": " ".join(sys.argv) if sys.argv and "iqlut" in sys.argv[0] else "iqlut_gpu.train.train()",
            "kind": cfg.kind, "seed": cfg.seed, "machine": machine(self.device), "iterations": self.it,
            "train_seconds": round(self.elapsed, 1), "batch": cfg.batch, "patch": cfg.patch,
            "lambda": cfg.lam if self.teacher is not None else 0.0, "bf16_grad": self.bf16,
            **({"init": cfg.init_note} if cfg.init_note else {}),
            **({"bias_calibration": self.calibration} if self.calibration else {}),
            **({"ensemble_how": f"trained under the {cfg.ensemble}-pass ensemble (iqlut train "
                                f"--ensemble {cfg.ensemble}): its averaged output is what the "
                                f"loss, the validation and the bias refit saw"}
               if cfg.ensemble > 1 else {}),
            "dataset": (self.data_note if cfg.data else
                        "skimage+sklearn photos, mate-backgrounds, plasma-workspace-wallpapers "
                        "(iqlut_gpu.train.data; validation split data.VALIDATION)")
                       + (f"; validation: {cfg.val}" if cfg.val else ""),
        }

    def export(self) -> dict:
        """Export the quantised student (atomically), after checking that the integer
        runtime scores on the validation split what the torch forward does (the check's
        figures go into the provenance); returns the run's summary."""
        cfg, net, val = self.cfg, self.net, self.val
        net.eval()
        torch_score = val.score(torch_upscaler(self.student, self.device))
        provenance = self.provenance()
        model = net.export(provenance).with_ensemble(cfg.ensemble)
        rt_score = val.score(runtime_upscaler(model))
        table = {"val_crop": cfg.val_crop, "bicubic_psnr": round(self.bic, 4),
                 "model_psnr": round(rt_score["psnr"], 4), "model_ssim": round(rt_score["ssim"], 5),
                 "torch_psnr": round(torch_score["psnr"], 4),
                 "export_minus_torch_db": round(rt_score["psnr"] - torch_score["psnr"], 5)}
        provenance["validation"] = table
        model = net.export(provenance).with_ensemble(cfg.ensemble)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, self.out)
        self.log(f"exported {self.out}: {model.storage_bytes()} bytes; validation (crop "
                 f"{cfg.val_crop}) bicubic {self.bic:.3f} dB, model {rt_score['psnr']:.3f} dB "
                 f"(+{rt_score['psnr'] - self.bic:.3f}), torch {torch_score['psnr']:.3f} dB, "
                 f"export - torch {table['export_minus_torch_db']:+.4f} dB")
        return {"out": str(self.out), "iterations": self.it, "elapsed": self.elapsed,
                "history": self.history, "validation": table,
                "storage_bytes": model.storage_bytes(),
                "loss": None if self.loss_ema is None else float(self.loss_ema),
                "base_loss": None if self.base_ema is None else float(self.base_ema)}


def train(cfg: Config, resume: bool = False, log=print, progress: bool = True,
          warn=None) -> dict:
    """Train, export ``cfg.out`` (atomically) and return a summary dict. ``warn``: where
    lines about skipped files go (``warning: ...``, ``note: ...``; default stderr)."""
    run = Trainer(cfg, resume=resume, log=log, warn=warn, progress=progress)
    run.fit(progress)
    run.finish()
    return run.export()


def main(argv=None) -> int:
    """``python -m iqlut_gpu.train.trainer`` (the options of ``iqlut train``)."""
    p = argparse.ArgumentParser(prog="python -m iqlut_gpu.train.trainer",
                                description="Train an IQ-LUT model (as `iqlut train`).")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        cfg = Config.from_args(args)
    except ValueError as e:
        p.error(str(e))
    train(cfg, resume=args.resume, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
