"""Paper-size benchmark of the swap networks (FlowFace++'s Fswa and Dshape, FaceDancer, FaceShifter's AEI-Net,
HifiFace):
time, peak memory, attention vs convolution share.

    python -m bench.models [--device cuda] [--batch 2] [--iters 3] [--models fswa dshape mae facedancer aei hififace]

Each model runs one training-like step per iteration (forward + backward of a dummy loss):
  * fswa:   SwapGenerator(source, target) at 256x256 (frozen MAE encoder under no_grad, as trained);
  * dshape: ShapeDiscriminator(i2, p12, p2, s2) -> (i2_res, V) with Gres + warping;
  * mae:    FaceMAE pretraining step (75 % masking);
  * dswa:   PatchDiscriminator on a 256x256 batch;
  * facedancer: FaceDancer's generator (FaceDancerNet) on a 256x256 target and a unit identity embedding
    (the frozen identity network is not part of it);
  * aei:    FaceShifter's AEI-Net, the same way;
  * hififace: HifiFace's generator (HifiFaceNet with SFF) on a 256x256 target and a random v_sid (the frozen
    identity network and 3DMM regressor that make v_sid are not part of it).
Peak memory: CUDA max_memory_allocated on GPU; on CPU the peak process RSS above the pre-build
baseline, sampled every 2 ms by a thread (psutil), else the ru_maxrss high-water delta (a lower
bound when an earlier model already set a higher mark). Op shares come from torch.profiler self
times (CPU self time, or device self time on CUDA) grouped by op name: attention =
scaled_dot_product_attention kernels, bmm, softmax (in these networks bmm/softmax occur only in
attention); convolution = conv kernels; linear = mm/addmm (QKV, projections, MLPs).
Not run by the tests at paper size.
"""
from __future__ import annotations

import argparse
import resource
import threading
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from faceswap_models.config import FlowFaceConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import ShapeDiscriminator
from faceswap_models.swap import SwapGenerator

CATEGORIES = ("attention", "convolution", "linear", "other")


def op_category(name: str) -> str:
    """Map a profiler op name (forward or backward) to one of CATEGORIES."""
    n = name.lower()
    if "scaled_dot_product" in n or "flash_attention" in n or "efficient_attention" in n \
            or "cudnn_attention" in n or "bmm" in n or "softmax" in n:
        return "attention"
    if "conv" in n:
        return "convolution"
    if n in ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul") or "mmbackward" in n \
            or "addmmbackward" in n or "gemm" in n:
        return "linear"
    return "other"


class _PeakRSS:
    """Context manager sampling process RSS in a thread; .peak_bytes above the baseline at entry."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        try:
            import psutil  # optional
            self._proc = psutil.Process()
            self._base = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        except ImportError:
            self._proc = None
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss - self._base)
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(name: str, cfg: FlowFaceConfig, batch: int, device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
    """Build a paper-size model and a closure running forward + backward once."""
    S = cfg.swap.mae.img_size
    g = torch.Generator().manual_seed(0)

    def img() -> Tensor:
        return (torch.rand(batch, 3, S, S, generator=g) * 2 - 1).to(device)

    if name == "fswa":
        model: nn.Module = SwapGenerator(cfg.swap).to(device).train()
        src, tgt = img(), img()

        def step() -> None:
            model(src, tgt).square().mean().backward()
    elif name == "dshape":
        model = ShapeDiscriminator(cfg.shape).to(device).train()
        K = cfg.shape.num_landmarks
        p2 = (torch.rand(batch, K, 2, generator=g) * (S - 1)).to(device)
        p12 = p2 + torch.randn(batch, K, 2, generator=g).to(device)
        s2 = torch.randint(0, cfg.shape.num_classes, (batch, S, S), generator=g).to(device)
        i2 = img()

        def step() -> None:
            i2_res, v = model(i2, p12, p2, s2)
            ((i2_res - i2).square().mean() + v.square().mean()).backward()
    elif name == "mae":
        model = FaceMAE(cfg.swap.mae).to(device).train()
        x = img()

        def step() -> None:
            model(x)[0].backward()
    elif name == "dswa":
        model = PatchDiscriminator(cfg.swap_disc).to(device).train()
        x = img()

        def step() -> None:
            model(x).mean().backward()
    elif name in ("facedancer", "aei"):
        from faceswap_models.facedancer.config import FaceDancerNetConfig
        from faceswap_models.facedancer.networks import FaceDancerNet
        from faceswap_models.faceshifter.config import AEINetConfig
        from faceswap_models.faceshifter.networks import AEINet

        net = FaceDancerNet(FaceDancerNetConfig.paper()) if name == "facedancer" else AEINet(AEINetConfig.paper())
        model = net.to(device).train()
        z_id = nn.functional.normalize(torch.randn(batch, 512, generator=g), dim=1).to(device)
        x = img()

        def step() -> None:
            out = model(z_id, x)
            (out if name == "facedancer" else out[0]).square().mean().backward()
    elif name == "hififace":
        from faceswap_models.hififace.config import HifiFaceNetConfig
        from faceswap_models.hififace.networks import HifiFaceNet

        hcfg = HifiFaceNetConfig.paper()
        model = HifiFaceNet(hcfg).to(device).train()
        v_sid = torch.randn(batch, hcfg.style_dim, generator=g).to(device)
        x = img()

        def step() -> None:
            out = model(v_sid, x)
            (out.image.square().mean() + out.low.square().mean()).backward()
    else:
        raise ValueError(f"unknown model {name!r}; choose from fswa, dshape, mae, dswa, facedancer, aei, hififace")
    return model, step


def _bench_one(name: str, cfg: FlowFaceConfig, batch: int, iters: int, device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakRSS() as rss:
        model, step = _make_step(name, cfg, batch, device)
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        step()  # warmup
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
            model.zero_grad(set_to_none=True)
        _sync(device)
        dt = (time.perf_counter() - t0) / iters
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak_bytes

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    model.zero_grad(set_to_none=True)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        totals[op_category(ev.key)] += float(t)
    all_t = sum(totals.values()) or 1.0
    del model, step
    return {
        "params_M": n_params / 1e6,
        "trainable_M": n_train / 1e6,
        "batch": batch,
        "step_s": dt,
        "s_per_sample": dt / batch,
        "peak_mem_MiB": peak / 2**20,
        **{f"frac_{k}": v / all_t for k, v in totals.items()},
    }


def bench_models(device: str | torch.device = "cpu", batch_size: int = 1, iters: int = 3,
                 models: Sequence[str] = ("fswa", "dshape", "facedancer", "hififace"),
                 cfg: FlowFaceConfig | None = None) -> dict[str, dict[str, float]]:
    """Forward+backward time per 256x256 sample, peak memory and op-time shares per model.

    Args:
        device: 'cpu' or 'cuda[:i]'.
        batch_size: samples per step (1-2 for paper size on CPU).
        iters: timed iterations after one warmup.
        models: any of 'fswa', 'dshape', 'mae', 'dswa', 'facedancer', 'aei', 'hififace'.
        cfg: defaults to FlowFaceConfig.paper().
    Returns:
        {model: {'params_M', 'trainable_M', 'batch', 'step_s', 's_per_sample', 'peak_mem_MiB',
                 'frac_attention', 'frac_convolution', 'frac_linear', 'frac_other'}}
    """
    dev = torch.device(device)
    cfg = cfg or FlowFaceConfig.paper()
    return {m: _bench_one(m, cfg, batch_size, iters, dev) for m in models}


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = ["params_M", "trainable_M", "batch", "s_per_sample", "peak_mem_MiB",
            "frac_attention", "frac_convolution", "frac_linear", "frac_other"]
    lines = ["| model | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in results.items():
        cells = [f"{r[c]:.0f}" if c == "batch" else f"{r[c]:.3f}" if c.startswith(("frac", "s_")) else f"{r[c]:.1f}"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Benchmark paper-size swap networks.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--models", nargs="+", default=["fswa", "dshape", "facedancer", "hififace"])
    a = p.parse_args(argv)
    res = bench_models(a.device, a.batch, a.iters, a.models)
    dev = torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith("cuda") \
        else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {dev}, torch {torch.__version__}, 256x256, forward+backward, {a.iters} iters after 1 warmup")
    print(format_table(res))


if __name__ == "__main__":
    main()
