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
"""

from __future__ import annotations

import math
import os
import platform
import signal
import sys
import threading
import time
import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import save_model
from ..planes import from_planes, to_planes
from . import data
from .calibrate import calibrate_bias
from .config import Config, add_arguments
from .net import EnsembleNet, LUTNet, TeacherCNN, ecnn_arch, iqlut_arch
from .torch_forward import bf16_supported
from .validate import Validation, runtime_upscaler

QUANT_AT = 0.7


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(setting: str, device: torch.device) -> bool:
    """``auto``: bfloat16 where it is fast (``torch_forward.bf16_supported``)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be auto, on or off, got {setting!r}")
    return bf16_supported(device) if setting == "auto" else setting == "on"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
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


# ----------------------------------------------------------------------------- training


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


def train(cfg: Config, resume: bool = False, log=print, progress: bool = True) -> dict:
    """Train, export ``cfg.out`` (atomically) and return a summary dict."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device()
    out = cfg.resolved_out()
    ckpt_path = out.with_name(out.name + ".ckpt")
    out.parent.mkdir(parents=True, exist_ok=True)
    st = None
    init_model = None  # the model --init loaded (int8_only keeps its shifts)
    if resume and ckpt_path.exists():
        # on the CPU: torch.set_rng_state takes only a CPU tensor; load_state_dict copies the
        # weights (and Adam's moments) onto the net's device
        st = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if st["config"]["scale"] != cfg.scale or st["config"]["kind"] != cfg.kind:
            raise ValueError(f"checkpoint {ckpt_path} is for another scale/kind")
    arch = cfg.arch or [dict(a) for a in
                        (iqlut_arch if cfg.kind == "iqlut" else ecnn_arch)(
                            cfg.scale, cfg.hidden, cfg.last_k, cfg.hidden_k, cfg.width)]
    if st is not None and list(st["config"]["arch"]) != list(arch):
        if (cfg.arch or cfg.hidden is not None or cfg.last_k is not None
                or cfg.hidden_k is not None or cfg.width is not None):
            old = st["config"]["arch"]
            raise ValueError(f"checkpoint {ckpt_path} has {len(old)} layers (windows "
                             f"{[a['k'] for a in old]}, width {old[0]['c_out']}), not the "
                             f"{len(arch)} (windows {[a['k'] for a in arch]}, width "
                             f"{arch[0]['c_out']}) asked for")
        arch = st["config"]["arch"]  # a run started under another default shape continues as it was
    cfg.arch = [dict(a) for a in arch]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bf16 = use_bf16(cfg.bf16, device)
    net = LUTNet(cfg.scale, arch, kind=cfg.kind, bf16_grad=bf16).to(device)
    if st is not None:  # where the run started is the run's, whatever this command says
        cfg.init, cfg.init_note = st["config"].get("init", ""), st["config"].get("init_note", {})
    elif cfg.init:
        from ..model import load_model
        init_model = load_model(cfg.init)
        added = net.load_model(init_model)
        cfg.init_note = {"file": Path(cfg.init).name, "layers_added": added,
                         **{k: init_model.provenance[k] for k in ("iterations", "train_seconds", "seed")
                            if k in init_model.provenance}}
        widened = ""
        if init_model.layers[0].c_out != arch[0]["c_out"]:
            cfg.init_note["width_from"] = init_model.layers[0].c_out
            widened = f", widened from {init_model.layers[0].c_out} to {arch[0]['c_out']} channels"
        log(f"student starts from {cfg.init} ({len(init_model.layers)} layers, {added} identity "
            f"layers added{widened}); distillation only on batches where the teacher is better")
    # what is trained, validated, refit and exported: the net, or its n-pass ensemble
    student = EnsembleNet(net, cfg.ensemble)
    use_teacher = cfg.kind == "iqlut" and cfg.lam > 0
    teacher = TeacherCNN(cfg.scale, cfg.teacher_width).to(device) if use_teacher else None
    knot_params = [p for n, p in net.named_parameters() if n.endswith("knot_logits")]
    other = [p for n, p in net.named_parameters() if not n.endswith("knot_logits")]
    groups = [{"params": other, "lr": cfg.lr, "base": cfg.lr}]
    if knot_params:
        groups.append({"params": knot_params, "lr": cfg.knot_lr, "base": cfg.knot_lr})
    opt = torch.optim.Adam(groups)
    topt = torch.optim.Adam(teacher.parameters(), lr=cfg.lr) if teacher is not None else None

    def int8_opt():
        """The int8 stage's optimiser: tables and biases (the knots are frozen)."""
        return torch.optim.Adam([{"params": other, "lr": cfg.lr, "base": cfg.lr}])

    def enter_int8(like=None):
        """Round and freeze the knots, int8 tables from here (``like``: keep that loaded
        model's shifts); returns the new (quantised, quant_point, opt)."""
        net.freeze_knots()
        net.start_quant(like=like)
        return True, (elapsed, it), int8_opt()

    elapsed, it, history, quantised = 0.0, 0, [], False
    quant_point = None  # (elapsed seconds, iteration) when the int8 stage began
    if st is not None:
        net.load_state_dict(st["net"])
        quantised = st["quantised"]
        if quantised:  # the frozen knots no longer train (no Adam state for them)
            for p in knot_params:
                p.requires_grad_(False)
            opt = int8_opt()
        opt.load_state_dict(st["opt"])
        if teacher is not None and st.get("teacher"):
            teacher.load_state_dict(st["teacher"])
            topt.load_state_dict(st["topt"])
        elapsed, it, history = st["elapsed"], st["iteration"], st["history"]
        if quantised:
            old = st["config"]
            quant_point = tuple(st.get("quant_point") or (QUANT_AT * old["time_budget"],
                                                           int(QUANT_AT * old["max_iters"])))
        rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed from {ckpt_path} at iteration {it}, {elapsed:.0f} s")
        if st["config"].get("ensemble", 1) != cfg.ensemble:
            log(f"the checkpoint trained a {st['config'].get('ensemble', 1)}-pass output; "
                f"from here the {cfg.ensemble}-pass ensemble's")
        old_budget = st["config"]["time_budget"]
        if not cfg.max_iters and cfg.time_budget > old_budget:
            log(f"budget extended from {old_budget:.0f} to {cfg.time_budget:.0f} s: "
                f"the rest of the schedule stretches to the new end")

    if cfg.int8_only and st is None:  # Config checked that init is given
        # the model's knots (frozen) and int8 tables (exact at the chosen shift) from step 0:
        # the whole budget is the int8 stage, its cosine from 0.3 of the peak rate to zero
        quantised, quant_point, opt = enter_int8(like=init_model)
    log(f"training {cfg.kind} x{cfg.scale} on {machine()}; budget {cfg.time_budget:.0f} s"
        f"{'; bfloat16 gradients' if bf16 else ''}")
    hr_bank, lr_bank = data.build_bank(cfg.scale, limit=cfg.limit_images or None,
                                        log=lambda m: None, names=cfg.images or None)
    val = Validation(cfg.scale, cfg.val_crop, limit=cfg.limit_val)
    bic = val.bicubic()["psnr"]
    log(f"data: {len(hr_bank)} training crops ({data.CROP}px planes), "
        f"{len(val.names)} validation images; bicubic validation {bic:.3f} dB")

    def state() -> dict:
        return {"config": asdict(cfg), "net": net.state_dict(), "opt": opt.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "topt": topt.state_dict() if topt is not None else None,
                "quantised": quantised, "quant_point": list(quant_point) if quant_point else None,
                "elapsed": elapsed, "iteration": it, "history": history,
                "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}

    def validate() -> float:
        net.eval()
        v = val.score(torch_upscaler(student, device))["psnr"]
        net.train()
        history.append({"iteration": it, "elapsed_s": round(elapsed, 1), "val_psnr": round(v, 4),
                        "quantised": quantised})
        return v

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=int(cfg.time_budget), initial=int(min(elapsed, cfg.time_budget)),
                   unit="s", desc=f"{cfg.kind} x{cfg.scale}", file=sys.stderr,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    last_val = history[-1]["val_psnr"] if history else float("nan")
    t_ckpt = t_val = time.monotonic()
    loss_ema = base_ema = step_ema = None
    previous_term = _catch_sigterm()
    try:
        while elapsed < cfg.time_budget and not (cfg.max_iters and it >= cfg.max_iters):
            t0 = time.monotonic()
            frac = elapsed / cfg.time_budget if not cfg.max_iters else it / cfg.max_iters
            if not quantised and frac >= QUANT_AT:
                quantised, quant_point, opt = enter_int8()
                log(f"iteration {it}: knots frozen, int8 tables (shifts "
                    f"{[int(layer.shift) for layer in net.layers]})")
            if quant_point is None:
                quant_frac = None
            elif cfg.max_iters:
                quant_frac = min(quant_point[1] / cfg.max_iters, QUANT_AT)
            else:
                quant_frac = min(quant_point[0] / cfg.time_budget, QUANT_AT)
            for g in opt.param_groups:
                g["lr"] = g["base"] * _lr_factor(frac, quant_frac)
            lo, hi = data.sample_batch(rng, hr_bank, lr_bank, cfg.scale, cfg.batch, cfg.patch)
            x = torch.from_numpy(lo.astype(np.float32))[:, None].to(device)
            y = torch.from_numpy(hi.astype(np.float32))[:, None].to(device) / 255.0
            pred = student(x) / 255.0
            loss = F.mse_loss(pred, y)
            total = loss
            if teacher is not None:
                tpred = teacher(x) / 255.0
                tloss = F.mse_loss(tpred, y)
                topt.zero_grad(set_to_none=True)
                tloss.backward()
                topt.step()
                # a student started from a trained model is, at first, far better than the
                # teacher trained alongside from scratch: follow the teacher only where it is
                # the better of the two on this batch
                if not cfg.init or float(tloss.detach()) < float(loss.detach()):
                    total = loss + cfg.lam * F.mse_loss(pred, tpred.detach())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            it += 1
            lv = float(loss.detach())
            with torch.no_grad():
                bv = float(F.mse_loss(net.upsample(x) / 255.0, y))
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            base_ema = bv if base_ema is None else 0.98 * base_ema + 0.02 * bv
            dt = counted_step_time(time.monotonic() - t0, step_ema)
            step_ema = dt if step_ema is None else 0.95 * step_ema + 0.05 * dt
            elapsed += dt
            now = time.monotonic()
            if now - t_val >= cfg.val_every:
                last_val = validate()
                t_val = time.monotonic()
            if now - t_ckpt >= cfg.ckpt_every:
                save_checkpoint(ckpt_path, state())
                t_ckpt = time.monotonic()
            if bar is not None:
                bar.n = int(min(elapsed, cfg.time_budget))
                bar.set_postfix(it=it, loss=f"{loss_ema:.2e}",
                                gain_db=f"{10 * math.log10(base_ema / max(loss_ema, 1e-12)):+.2f}",
                                val=f"{last_val:.2f}", refresh=False)
                bar.update(0)
    except KeyboardInterrupt:  # keep what was learned: --resume continues from here
        save_checkpoint(ckpt_path, state())
        if bar is not None:
            bar.close()
        log(f"interrupted at iteration {it}; checkpoint {ckpt_path} (resume with --resume)")
        raise
    finally:
        _restore_sigterm(previous_term)
    if not quantised:  # ended before the int8 stage: export (and checkpoint) it quantised
        # with the optimiser a quantised checkpoint holds, as in the loop (a resume rebuilds it)
        quantised, quant_point, opt = enter_int8()
    calibration = None
    if cfg.calib_patches:
        calibration = calibrate_bias(student, hr_bank, lr_bank, cfg.patch, device, cfg.seed,
                                     cfg.calib_patches)
        log(f"bias refit on {cfg.calib_patches} training patches: mean error per phase "
            f"{calibration['mean_error_before']} -> {calibration['mean_error_after']} codes")
    last_val = validate()
    save_checkpoint(ckpt_path, state())
    if bar is not None:
        bar.close()

    # ---- export and check the integer runtime against the torch forward
    net.eval()
    torch_score = val.score(torch_upscaler(student, device))
    provenance = {
        "command": " ".join(sys.argv) if sys.argv and "iqlut" in sys.argv[0] else "iqlut_gpu.train.train()",
        "kind": cfg.kind, "seed": cfg.seed, "machine": machine(), "iterations": it,
        "train_seconds": round(elapsed, 1), "batch": cfg.batch, "patch": cfg.patch,
        "lambda": cfg.lam if teacher is not None else 0.0, "bf16_grad": bf16,
        **({"init": cfg.init_note} if cfg.init_note else {}),
        **({"bias_calibration": calibration} if calibration else {}),
        **({"ensemble_how": f"trained under the {cfg.ensemble}-pass ensemble (iqlut train "
                            f"--ensemble {cfg.ensemble}): its averaged output is what the "
                            f"loss, the validation and the bias refit saw"}
           if cfg.ensemble > 1 else {}),
        "dataset": "skimage+sklearn photos, mate-backgrounds, plasma-workspace-wallpapers "
                   "(iqlut_gpu.train.data; validation split data.VALIDATION)",
    }
    model = net.export(provenance).with_ensemble(cfg.ensemble)
    rt_score = val.score(runtime_upscaler(model))
    table = {"val_crop": cfg.val_crop, "bicubic_psnr": round(bic, 4),
             "model_psnr": round(rt_score["psnr"], 4), "model_ssim": round(rt_score["ssim"], 5),
             "torch_psnr": round(torch_score["psnr"], 4),
             "export_minus_torch_db": round(rt_score["psnr"] - torch_score["psnr"], 5)}
    provenance["validation"] = table
    model = net.export(provenance).with_ensemble(cfg.ensemble)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    log(f"exported {out}: {model.storage_bytes()} bytes; validation (crop {cfg.val_crop}) "
        f"bicubic {bic:.3f} dB, model {rt_score['psnr']:.3f} dB "
        f"(+{rt_score['psnr'] - bic:.3f}), torch {torch_score['psnr']:.3f} dB, "
        f"export - torch {table['export_minus_torch_db']:+.4f} dB")
    return {"out": str(out), "iterations": it, "elapsed": elapsed, "history": history,
            "validation": table, "storage_bytes": model.storage_bytes(), "loss": loss_ema,
            "base_loss": base_ema}


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
