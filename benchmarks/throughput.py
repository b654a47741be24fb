"""Training throughput, side by side and interleaved: the project's loop, its ceiling, and a textbook loop.

(a) project: cnnablate.train.run_to_convergence for one epoch, the loop every training job runs
    (device-resident data, batched tensor augmentation, metrics accumulated on the device, the schedule, and
    the epoch's validation check on a one-batch validation split);
(b) ceiling: the same step function over batches made before timing (forward, backward, optimizer step only);
(c) textbook: a torchvision dataset with per-sample PIL transforms and a DataLoader with workers.

Epochs of (a), (b) and (c) alternate, so drifts of the machine hit all three alike; the table reports
medians over repeats. It also runs one real training job in a fresh process and splits its fixed cost
(process start to first step, last step to exit).

    python benchmarks/throughput.py --config config/demo.yaml [--variant base] [--train-size 50000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnablate.config import Study, load_config
from cnnablate.data import ArrayDataset, make_synthetic, prepare_dataset
from cnnablate.devices import choose_device
from cnnablate.train import epoch_generator, prepare_fit, run_to_convergence, train_step


def textbook_loader(
    x: np.ndarray,
    y: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int,
    workers: int,
    pin: bool,
) -> torch.utils.data.DataLoader:
    """What most tutorials write: PIL images, per-sample transforms, a DataLoader with worker processes."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import VisionDataset

    class ArrayImages(VisionDataset):
        def __init__(self) -> None:
            super().__init__(
                root="",
                transform=transforms.Compose(
                    [
                        transforms.RandomCrop(x.shape[1], padding=4),
                        transforms.RandomHorizontalFlip(),
                        transforms.ToTensor(),
                        transforms.Normalize(mean.tolist(), std.tolist()),
                    ]
                ),
            )

        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(x[index])), int(y[index])

    return torch.utils.data.DataLoader(
        ArrayImages(),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def job_overhead(config_path: Path, variant: str) -> dict[str, float]:
    """One real 1-epoch training job in a fresh process, as a workflow job runs it: its fixed costs, from process
    start to first step and from last step to exit (MLflow is the separate ``track`` job's cost, not this one's)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        config = load_config(config_path)
        config["train"]["max_steps"] = 1  # one step: the cap ends the run at once
        prepare_dataset(config["data"]).save(root / "data.npz")
        job = {"spec": Study.from_config(config).variants[variant].spec, "recipe": config["train"]}
        (root / "job.json").write_text(json.dumps(job))
        code = f"""
import json, time
from pathlib import Path
from cnnablate.train import TrainJob, train
root = Path({scratch!r})
job = json.loads((root / "job.json").read_text())
metrics = train(TrainJob("bench", {variant!r}, 0, job["spec"], job["recipe"], root / "data.npz", root / "run",
                         root / "ckpt.pt"))
print(json.dumps(metrics["overhead_seconds"] | {{"train_seconds": metrics["train_seconds"],
                 "eval_seconds": metrics["eval_seconds"], "returned_at": time.time()}}))
"""
        started = time.time()
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        exited = time.time()
    parts = json.loads(output.strip().splitlines()[-1])
    parts["interpreter_exit"] = exited - parts.pop("returned_at")
    parts["wall"] = exited - started
    return parts


def device_rates(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """Measured ceilings: a large matrix product (FLOP/s in ``dtype``) and a large copy (bytes/s, read + write)."""
    size = 2048 if device.type == "cpu" else 8192
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    source = torch.randn(64 * 2**20 if device.type == "cpu" else 1024 * 2**20 // 4, device=device)
    target = torch.empty_like(source)

    def best(action, repeats: int = 5) -> float:
        action()
        synchronize(device)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            action()
            synchronize(device)
            times.append(time.perf_counter() - started)
        return min(times)

    flops = 2 * size**3 / best(lambda: a @ b)
    bandwidth = 2 * source.numel() * source.element_size() / best(lambda: target.copy_(source))
    return flops, bandwidth


def floor_estimate(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    images: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Fewest seconds an epoch can take: training FLOPs (3 x forward) over the measured matmul rate, and the
    bytes that must move (images once, weights, gradients and momentum once per step) over the copy rate."""
    from cnnablate.measure import count_macs, count_params

    macs = count_macs(model, image_shape)
    flops = 3 * 2 * macs * images
    params = count_params(model)
    steps = images // batch_size
    moved = images * int(np.prod(image_shape)) + steps * params * 4 * 6  # w, grad, momentum: read + write
    rate, bandwidth = device_rates(device, dtype)
    return {
        "forward_macs_per_image": macs,
        "train_flops_per_epoch": flops,
        "bytes_per_epoch": moved,
        "matmul_flops_per_second": rate,
        "copy_bytes_per_second": bandwidth,
        "compute_floor_ms": flops / rate * 1e3,
        "memory_floor_ms": moved / bandwidth * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    parser.add_argument("--variant", default="base")
    parser.add_argument("--train-size", type=int, help="use this many synthetic training images instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the textbook loop")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if CUDA is available")
    parser.add_argument(
        "--compile",
        choices=["off", "default", "reduce-overhead", "max-autotune"],
        help="override train.compile (reduce-overhead = CUDA graphs); run once per mode to compare",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    recipe = config["train"] | ({"compile": args.compile} if args.compile else {})
    torch.set_num_threads(recipe["threads"])
    arrays = (
        make_synthetic(args.train_size, 1000, seed=0, contrast=1.0)
        if args.train_size
        else prepare_dataset(config["data"])
    )
    choice = choose_device(recipe["precision"], recipe["channels_last"], recipe["jobs_per_gpu"], args.cpu)
    spec = Study.from_config(config).variants[args.variant].spec
    # the validation split is one small batch: (a) pays the per-epoch check's synchronisation, not its work
    arrays = ArrayDataset(
        arrays.x_train, arrays.y_train, None, None, arrays.classes, arrays.x_train[:64], arrays.y_train[:64]
    )
    batch_size = min(recipe["batch_size"], len(arrays.y_train))
    steps_per_epoch = len(arrays.y_train) // batch_size
    fit = prepare_fit(spec, arrays, 0, recipe | {"eval_every": steps_per_epoch}, recipe["lr"], choice, steps_per_epoch)
    data, schedule = fit.train_data, fit.new_progress().schedule

    def step(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The project's own step (rate, forward, loss, backward, update), as (b) and (c) call it."""
        return train_step(fit, schedule, 0, images, labels)

    images_per_epoch = steps_per_epoch * batch_size
    premade = list(
        data.train_batches(batch_size, epoch_generator(0, 0, choice.device), recipe["crop_padding"], recipe["flip"])
    )
    loader = textbook_loader(
        arrays.x_train,
        arrays.y_train,
        data.mean.flatten().cpu(),
        data.std.flatten().cpu(),
        batch_size,
        args.workers,
        choice.device.type == "cuda",
    )

    def project_epoch(_: int) -> None:
        run_to_convergence(fit, fit.new_progress())

    def ceiling_epoch(_: int) -> None:
        for images, labels in premade:
            step(images, labels)
        synchronize(choice.device)

    def textbook_epoch(_: int) -> None:
        for images, labels in loader:
            images = images.to(choice.device, non_blocking=True).contiguous(memory_format=data.memory_format)
            loss, _ = step(images, labels.to(choice.device, non_blocking=True))
            loss.item()  # the textbook loop reads the loss every step
        synchronize(choice.device)

    loops = {"a_project": project_epoch, "b_ceiling": ceiling_epoch, "c_textbook": textbook_epoch}
    for loop in loops.values():  # warm-up: allocator, cuDNN autotuning, compilation, worker start
        loop(0)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for repeat in range(args.repeats):
        for name, loop in loops.items():
            synchronize(choice.device)
            started = time.perf_counter()
            loop(repeat + 1)
            times[name].append(time.perf_counter() - started)

    rates = {name: images_per_epoch / statistics.median(values) for name, values in times.items()}
    print(
        f"\nvariant {args.variant}, {images_per_epoch} images/epoch, batch {batch_size}, {choice.description}, "
        f"autocast {choice.autocast_dtype}, channels_last {choice.channels_last}, compile {recipe['compile']}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats} interleaved epochs"
    )
    print(f"{'loop':<12}{'ms/epoch':>12}{'images/s':>12}   epochs (ms)")
    for name, values in times.items():
        print(
            f"{name:<12}{statistics.median(values) * 1e3:>12.1f}{rates[name]:>12.0f}   "
            + " ".join(f"{v * 1e3:.0f}" for v in values)
        )
    ratios = {"a/b": rates["a_project"] / rates["b_ceiling"], "a/c": rates["a_project"] / rates["c_textbook"]}
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    _, height, _, channels = arrays.x_train.shape
    floor = floor_estimate(
        fit.model,
        (channels, height, height),
        images_per_epoch,
        batch_size,
        choice.device,
        choice.autocast_dtype or torch.float32,
    )
    print(
        f"floor: {floor['train_flops_per_epoch'] / 1e9:.1f} GFLOP/epoch at "
        f"{floor['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s = {floor['compute_floor_ms']:.1f} ms; "
        f"{floor['bytes_per_epoch'] / 1e6:.1f} MB/epoch at {floor['copy_bytes_per_second'] / 1e9:.1f} GB/s = "
        f"{floor['memory_floor_ms']:.2f} ms; measured {statistics.median(times['a_project']) * 1e3:.1f} ms/epoch"
    )
    result = {
        "variant": args.variant,
        "device": choice.description,
        "images_per_epoch": images_per_epoch,
        "seconds": times,
        "images_per_second": rates,
        "ratios": ratios,
        "floor": floor,
    }
    if not args.skip_overhead:
        overhead = job_overhead(args.config, args.variant)
        result["job_overhead_seconds"] = overhead
        print("one training job in a fresh process, seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in overhead.items()))
        print(
            "  (imports; device = CUDA initialisation; data = reading the dataset file; model = model and data on the"
            " device; first_step = process start to first step; finalize = test split, model.pt, history, metrics)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
